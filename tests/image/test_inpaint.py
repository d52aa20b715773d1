import numpy as np
import pytest

from batch_inpaint.errors import ConfigError, SizeMismatchError
from batch_inpaint.image.inpaint import InpaintResult, inpaint_array, prepare, region_seed
from batch_inpaint.image.masks import finish_mask
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.params import GenerationParams, GeometryOptions, InpaintOptions, MaskOptions


class Recording(OpenCVInpainter):
    """The real OpenCV backend, remembering each call's sizes and seeds."""

    def __init__(self, native_size=None, size_multiple=1):
        super().__init__()
        self.native_size, self.size_multiple = native_size, size_multiple
        self.calls = []

    def inpaint(self, images, masks, params, prompts, negative_prompts, seeds):
        self.calls.append(([im.shape for im in images], list(seeds), list(prompts)))
        return super().inpaint(images, masks, params, prompts, negative_prompts, seeds)


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def options(mode="full", dilate=2, feather=3, **gen):
    return InpaintOptions(
        generation=GenerationParams(**gen),
        mask=MaskOptions(dilate=dilate, feather=feather),
        geometry=GeometryOptions(mode=mode),
    )


def test_empty_mask_is_skipped_and_unchanged():
    img = photo(20, 30)
    r = inpaint_array(img, np.zeros((20, 30), bool), OpenCVInpainter(), options(), seed=5)
    assert isinstance(r, InpaintResult)
    assert r.status == "skipped" and r.regions == [] and r.seed == 5
    assert np.array_equal(r.image, img) and r.image is not img and len(r.images) == 1


@pytest.mark.parametrize("mode", ["full", "crop"])
@pytest.mark.parametrize("h,w", [(333, 517), (1, 1), (7, 300), (300, 7)])
def test_outside_the_mask_is_bit_for_bit(mode, h, w):
    img = photo(h, w)
    mask = np.zeros((h, w), bool)
    mask[h // 3 : h // 3 + max(1, h // 4), w // 2 : w // 2 + max(1, w // 5)] = True
    opts = options(mode)
    r = inpaint_array(img, mask, Recording(native_size=512, size_multiple=8), opts, seed=1)
    _, soft = finish_mask(mask, opts.mask)
    assert r.status == "ok" and r.image.shape == img.shape and r.image.dtype == np.uint8
    assert np.array_equal(r.image[soft == 0], img[soft == 0])


def test_small_mask_on_4k_costs_one_512_crop():
    img = photo(3000, 4000)
    mask = np.zeros((3000, 4000), bool)
    mask[1200:1230, 2500:2560] = True
    inp = Recording(native_size=512, size_multiple=8)
    r = inpaint_array(img, mask, inp, options("crop"), seed=9)
    assert len(r.regions) == 1 and r.regions[0].work_size == (512, 512)
    assert inp.calls == [([(512, 512, 3)], [9], ["background"])]
    _, soft = finish_mask(mask, options().mask)
    assert np.array_equal(r.image[soft == 0], img[soft == 0])
    assert (r.image[mask] != img[mask]).any()
    assert set(r.timings) == {"prepare", "model", "paste"}
    # the plain OpenCV backend (no native size) plans the same single 512 crop
    plain = inpaint_array(img, mask, OpenCVInpainter(), options("crop"), seed=9)
    assert [reg.work_size for reg in plain.regions] == [(512, 512)]
    assert np.array_equal(plain.image[soft == 0], img[soft == 0])


def test_regions_of_one_size_share_a_call_and_get_derived_seeds():
    img = photo(1200, 1800)
    mask = np.zeros((1200, 1800), bool)
    mask[100:110, 100:110] = mask[1000:1010, 1500:1510] = mask[100:110, 1500:1510] = True
    inp = Recording(native_size=256, size_multiple=8)
    r = inpaint_array(img, mask, inp, options("crop"), seed=42)
    assert len(r.regions) == 3 and len(inp.calls) == 1
    shapes, seeds, _ = inp.calls[0]
    assert shapes == [(256, 256, 3)] * 3
    assert seeds == [region_seed(42, i) for i in range(3)] and seeds[0] == 42
    assert len(set(seeds)) == 3


def test_seed_sources():
    img, mask = photo(40, 40), np.ones((40, 40), bool)  # an all-white mask is valid
    r = inpaint_array(img, mask, OpenCVInpainter(), options())
    assert r.status == "ok" and 0 <= r.seed < 2**31
    assert inpaint_array(img, mask, OpenCVInpainter(), options(seed=77)).seed == 77
    assert inpaint_array(img, mask, OpenCVInpainter(), options(seed=77), seed=3).seed == 3
    with pytest.raises(ConfigError, match="seed"):
        inpaint_array(img, mask, OpenCVInpainter(), options(), seed=-1)


def test_several_images_per_prompt():
    img = photo(50, 60)
    mask = np.zeros((50, 60), bool)
    mask[10:20, 10:20] = True
    r = inpaint_array(img, mask, OpenCVInpainter(), options(num_images_per_prompt=3), seed=0)
    assert len(r.images) == 3 and r.image is r.images[0]
    assert all(im.shape == img.shape for im in r.images)


def test_prepare_matches_the_in_process_path():
    img = photo(100, 140)
    mask = np.zeros((100, 140), bool)
    mask[40:60, 50:80] = True
    prep = prepare(img, mask, options("crop"), native_size=None, size_multiple=1)
    assert len(prep.regions) == len(prep.crops) == len(prep.crop_masks) == 1
    assert prep.crops[0].shape[:2] == prep.crop_masks[0].shape


def test_bad_inputs():
    with pytest.raises(SizeMismatchError, match="mask is"):
        inpaint_array(photo(10, 10), np.ones((10, 11), bool), OpenCVInpainter(), options())
    with pytest.raises(ConfigError, match="RGB uint8"):
        inpaint_array(np.zeros((10, 10)), np.ones((10, 10), bool), OpenCVInpainter(), options())
