import cv2
import numpy as np
import pytest

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models.base import Inpainter
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.params import GenerationParams


def scene(h=64, w=80):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (40, 120, 200)
    mask = np.zeros((h, w), np.uint8)
    mask[20:30, 30:45] = 255
    img[mask > 0] = (255, 0, 0)  # the object to remove
    return img, mask


def run(inp, images, masks, k=1):
    n = len(images)
    params = GenerationParams(num_images_per_prompt=k)
    return inp.inpaint(images, masks, params, ["x"] * n, [None] * n, list(range(n)))


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_fills_the_hole_and_keeps_the_rest(method):
    img, mask = scene()
    (out,) = run(OpenCVInpainter(method=method), [img], [mask])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[mask == 0], img[mask == 0])
    assert np.abs(out[mask > 0].astype(int) - (40, 120, 200)).max() <= 4  # the object is gone


def test_deterministic_and_one_copy_per_requested_image():
    img, mask = scene()
    inp = OpenCVInpainter(radius=5)
    a = run(inp, [img, img[::-1].copy()], [mask, mask[::-1].copy()], k=3)
    assert len(a) == 6
    assert all(np.array_equal(a[0], x) for x in a[1:3])
    b = run(inp, [img, img[::-1].copy()], [mask, mask[::-1].copy()], k=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_interface_and_description():
    inp = OpenCVInpainter(method="ns", radius=4)
    assert isinstance(inp, Inpainter)
    assert inp.backend == "opencv" and inp.native_size is None and inp.size_multiple == 1
    info = inp.describe()
    assert info["backend"] == "opencv" and info["method"] == "ns" and info["radius"] == 4
    # nothing to pin: the result rows' revision column stays empty; the version is still named
    assert info["revision"] is None and info["opencv_version"] == cv2.__version__
    assert inp.spec.model == "opencv-ns" and "prompt" in inp.spec.ignores


def test_bad_options_and_inputs():
    with pytest.raises(ConfigError, match="method must be one of"):
        OpenCVInpainter(method="patchmatch")
    with pytest.raises(ConfigError, match="radius"):
        OpenCVInpainter(radius=0)
    img, mask = scene()
    with pytest.raises(ModelError, match="batch lengths differ"):
        OpenCVInpainter().inpaint([img], [mask, mask], GenerationParams(), ["x"], [None], [0])
    with pytest.raises(ModelError, match="mask 0 is"):
        run(OpenCVInpainter(), [img], [mask[:10]])
