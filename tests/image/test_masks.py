import io

import numpy as np
import pytest
from PIL import Image

from batch_inpaint.errors import MaskError, SizeMismatchError
from batch_inpaint.image.masks import (
    RANDOM_KINDS,
    finish_mask,
    mask_from_alpha,
    mask_from_boxes,
    mask_from_image,
    mask_from_polygons,
    random_mask,
)
from batch_inpaint.params import MaskOptions


def png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def ramp() -> np.ndarray:
    return np.arange(256, dtype=np.uint8).reshape(16, 16)


# --- mask_from_image ------------------------------------------------------------------------


def test_threshold_is_half_of_full_scale_by_default():
    m = mask_from_image(png(Image.fromarray(ramp(), "L")), size=(16, 16))
    assert m.dtype == bool and m.shape == (16, 16)
    assert not m.flat[127] and m.flat[128] and m.sum() == 128


def test_threshold_and_invert_options():
    data = png(Image.fromarray(ramp(), "L"))
    assert mask_from_image(data, (16, 16), MaskOptions(threshold=0.0)).sum() == 255
    inverted = mask_from_image(data, (16, 16), MaskOptions(invert=True))
    assert np.array_equal(inverted, ~mask_from_image(data, (16, 16)))


def test_sixteen_bit_mask_uses_its_full_scale():
    values = np.array([[0, 32767, 32768, 65535]], dtype="<u2")
    im = Image.frombytes("I;16", (4, 1), values.tobytes())
    assert mask_from_image(png(im), (4, 1)).tolist() == [[False, False, True, True]]


def test_rgba_layer_white_strokes_on_transparent():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the stroke is opaque
    rgba[2:4, :, 3] = 255
    m = mask_from_image(png(Image.fromarray(rgba, "RGBA")), (8, 8))
    assert m[2:4].all() and m.sum() == 16


def test_la_one_bit_rgb_and_palette_masks():
    g = np.zeros((6, 6), np.uint8)
    g[1:3, 1:3] = 255
    expected = g > 0
    la = Image.fromarray(np.dstack([g, np.full_like(g, 255)]), "LA")
    for im in (la, Image.fromarray(g).convert("1"), Image.fromarray(g).convert("RGB")):
        assert np.array_equal(mask_from_image(png(im), (6, 6)), expected), im.mode
    assert np.array_equal(mask_from_image(Image.fromarray(g).convert("P"), (6, 6)), expected)


def test_array_masks():
    g = np.zeros((5, 7), np.uint8)
    g[2, 3] = 200
    for a in (g, g > 0, g / 255.0, np.dstack([g] * 3), g.astype(np.uint16) * 257):
        assert mask_from_image(a, (7, 5)).sum() == 1


def test_size_mismatch_names_both_sizes():
    data = png(Image.new("L", (10, 20), 255))
    with pytest.raises(SizeMismatchError, match="mask is 10x20 but the image is 30x40") as info:
        mask_from_image(data, size=(30, 40))
    assert info.value.kind == "size_mismatch"
    with pytest.raises(SizeMismatchError, match="rotated"):
        mask_from_image(data, size=(20, 10))


def test_resize_option_is_nearest_neighbour():
    small = np.array([[0, 255], [255, 0]], np.uint8)
    m = mask_from_image(png(Image.fromarray(small)), (8, 6), MaskOptions(resize=True))
    assert m.shape == (6, 8)
    assert m[:3, 4:].all() and m[3:, :4].all() and not m[:3, :4].any() and not m[3:, 4:].any()


def test_mask_from_alpha_marks_transparent_pixels():
    alpha = np.array([[0, 127, 128, 255]], np.uint8)
    assert mask_from_alpha(alpha).tolist() == [[True, True, False, False]]
    assert mask_from_alpha(alpha, MaskOptions(invert=True)).tolist() == [[False, False, True, True]]


# --- boxes and polygons ---------------------------------------------------------------------


def test_boxes_are_clipped_to_the_image():
    m = mask_from_boxes([[2, 3, 5, 4], [8, 8, 100, 100], [-10, -10, 1, 1]], (10, 10))
    assert m[3, 2:5].all() and m[3].sum() == 3
    assert m[8:, 8:].all() and m[0, 0] and m.sum() == 3 + 4 + 1


def test_box_forms():
    expected = mask_from_boxes([[1, 1, 3, 3]], (5, 5))
    assert np.array_equal(mask_from_boxes([1, 1, 3, 3], (5, 5)), expected)
    assert np.array_equal(mask_from_boxes("[[1, 1, 3, 3]]", (5, 5)), expected)
    assert np.array_equal(mask_from_boxes(np.array([[1, 1, 3, 3]]), (5, 5)), expected)
    assert mask_from_boxes([[1.5, 1.5, 2.2, 2.2]], (5, 5)).sum() == 4  # fractional edges grow


def test_bad_boxes_are_named():
    with pytest.raises(MaskError, match=r"box 1 \[5, 0, 5, 3\] is empty"):
        mask_from_boxes([[0, 0, 2, 2], [5, 0, 5, 3]], (10, 10))
    with pytest.raises(MaskError, match=r"box 0 .* is empty"):
        mask_from_boxes([[0, 6, 2, 2]], (10, 10))
    with pytest.raises(MaskError, match="box 0 .* must be"):
        mask_from_boxes([[0, 1, 2]], (10, 10))
    with pytest.raises(MaskError, match="not a number"):
        mask_from_boxes([[0, 1, 2, "x"]], (10, 10))


def test_polygon_forms_agree():
    nested = mask_from_polygons([[[2, 2], [12, 2], [7, 12]]], (16, 16))
    flat = mask_from_polygons([[2, 2, 12, 2, 7, 12]], (16, 16))
    single = mask_from_polygons([[2, 2], [12, 2], [7, 12]], (16, 16))
    assert np.array_equal(nested, flat) and np.array_equal(nested, single)
    assert nested[3, 7] and not nested[12, 2] and 40 < nested.sum() < 80


def test_polygon_outside_points_are_clipped_and_bad_ones_named():
    m = mask_from_polygons([[[-50, -50], [50, -50], [50, 50], [-50, 50]]], (8, 8))
    assert m.all()
    with pytest.raises(MaskError, match="polygon 0 needs at least 3 points"):
        mask_from_polygons([[[0, 0], [1, 1]], [[0, 0], [1, 1]]][:1] + [[0, 0, 1, 1]], (8, 8))
    with pytest.raises(MaskError, match="not finite"):
        mask_from_polygons([[0, 0, 5, float("nan"), 3, 3]], (8, 8))


# --- finish_mask ----------------------------------------------------------------------------


def _distance_to(point, shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - point[0], xx - point[1])


def test_finish_mask_without_options_is_the_mask():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    hard, soft = finish_mask(m)
    assert hard.dtype == np.uint8 and set(np.unique(hard)) == {0, 255}
    assert soft.dtype == np.float32 and np.array_equal(soft > 0, m) and soft.max() == 1.0


def test_dilation_is_round():
    m = np.zeros((41, 41), bool)
    m[20, 20] = True
    hard, _ = finish_mask(m, MaskOptions(dilate=8))
    d = _distance_to((20, 20), m.shape)
    assert np.array_equal(hard > 0, d <= 8 + 1e-3)  # a disc, not a square


def test_feather_falls_to_zero_within_feather_px():
    m = np.zeros((61, 61), bool)
    m[30, 30] = True
    hard, soft = finish_mask(m, MaskOptions(dilate=5, feather=10))
    d = _distance_to((30, 30), m.shape)
    assert (soft[hard > 0] == 1.0).all()
    ring = (d > 5.5) & (d < 14.5)
    assert ((soft[ring] > 0) & (soft[ring] < 1)).all()
    assert (soft[d > 15.01] == 0.0).all()
    assert soft[30, 45] == pytest.approx(1 / 11)  # 10 px out: the last non-zero step
    # monotone: further out is never brighter
    row = soft[30, 30:]
    assert (np.diff(row) <= 0).all()


def test_finish_mask_of_empty_and_full_masks():
    hard, soft = finish_mask(np.zeros((5, 5), bool), MaskOptions(dilate=3, feather=3))
    assert not hard.any() and not soft.any()
    hard, soft = finish_mask(np.ones((5, 5), bool), MaskOptions(dilate=3, feather=3))
    assert (hard == 255).all() and (soft == 1.0).all()


# --- random_mask ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_random_mask_is_deterministic_per_seed(kind):
    a = random_mask(256, 320, seed=7, kind=kind)
    assert a.dtype == bool and a.shape == (256, 320) and a.any()
    assert np.array_equal(a, random_mask(256, 320, seed=7, kind=kind))
    assert not np.array_equal(a, random_mask(256, 320, seed=8, kind=kind))


@pytest.mark.parametrize("coverage", [0.01, 0.1, 0.3])
def test_random_mask_honours_max_coverage(coverage):
    for seed in range(10):
        m = random_mask(128, 192, seed=seed, max_coverage=coverage)
        assert 0 < m.mean() <= coverage


def test_random_mask_rejects_bad_arguments():
    with pytest.raises(MaskError, match="kind"):
        random_mask(64, 64, 0, kind="blobs")
    with pytest.raises(MaskError, match="max_coverage"):
        random_mask(64, 64, 0, max_coverage=1.5)
