import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_inpaint.errors import ModelError, SizeMismatchError
from batch_inpaint.image.geometry import Region, cut, paste, plan_regions, resize_image
from batch_inpaint.image.masks import finish_mask
from batch_inpaint.params import GeometryOptions, MaskOptions

FULL = GeometryOptions(mode="full")
CROP = GeometryOptions(mode="crop")


def box_mask(h, w, *boxes):
    m = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_empty_mask_plans_nothing():
    for g in (FULL, CROP):
        assert plan_regions(np.zeros((30, 40), np.uint8), g, 512) == []


@pytest.mark.parametrize(
    "w,h,native,multiple,expected",
    [
        (256, 128, 512, 8, (512, 256)),  # small: upscaled to the native size
        (4000, 3000, 512, 8, (1024, 768)),  # big: capped at max_side
        (700, 500, 512, 8, (704, 504)),  # in between: its own size, rounded to multiples
        (333, 517, None, 1, (333, 517)),  # any-size model: untouched
        (1, 1, 512, 8, (512, 512)),
        (7, 3000, 512, 8, (8, 1024)),
    ],
)
def test_full_mode_work_size(w, h, native, multiple, expected):
    (region,) = plan_regions(np.ones((h, w), np.uint8), FULL, native, multiple)
    assert region.box == (0, 0, w, h)
    assert region.work_size == expected
    assert all(v % multiple == 0 for v in region.work_size)


def test_small_mark_on_4k_is_one_native_crop():
    m = box_mask(3000, 4000, (2000, 1000, 2040, 1030))
    (region,) = plan_regions(m, CROP, 512)
    x0, y0, x1, y1 = region.box
    assert region.work_size == (512, 512) and (x1 - x0, y1 - y0) == (512, 512)
    assert x0 <= 2000 and y0 <= 1000 and x1 >= 2040 and y1 >= 1030


def test_crop_regions_merge_when_close_and_never_overlap():
    far = box_mask(3000, 4000, (100, 100, 120, 120), (3000, 2500, 3050, 2550))
    assert len(plan_regions(far, CROP, 512)) == 2
    near = box_mask(3000, 4000, (1000, 1000, 1020, 1020), (1060, 1000, 1080, 1020))
    assert len(plan_regions(near, CROP, 512)) == 1
    # 600 px apart: 512 boxes would overlap, so they become one region
    overlapping = box_mask(3000, 4000, (1000, 1000, 1010, 1010), (1400, 1000, 1410, 1010))
    assert len(plan_regions(overlapping, CROP, 512)) == 1
    many = np.random.default_rng(0).random((600, 900)) > 0.9995
    regions = plan_regions(many, CROP, 256)
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            ax0, ay0, ax1, ay1 = a.box
            bx0, by0, bx1, by1 = b.box
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1)


def test_crop_box_is_clamped_and_large_regions_are_scaled_down():
    corner = box_mask(600, 800, (0, 0, 10, 10))
    (region,) = plan_regions(corner, CROP, 512)
    assert region.box == (0, 0, 512, 512)
    big = box_mask(3000, 4000, (500, 500, 2500, 1500))
    (region,) = plan_regions(big, GeometryOptions(mode="crop", crop_size=768), 512)
    x0, y0, x1, y1 = region.box
    assert x1 - x0 == y1 - y0 >= 2000 + 2 * 500  # margin is 25 % of the region's size
    assert region.work_size == (768, 768)


def test_crop_on_an_image_smaller_than_the_crop():
    # an any-size model works on a box under the crop size as it is, and shrinks a bigger one
    (region,) = plan_regions(np.ones((500, 333), np.uint8), CROP, None, 1)
    assert region.box == (0, 0, 333, 500) and region.work_size == (333, 500)
    (region,) = plan_regions(np.ones((517, 333), np.uint8), CROP, None, 1)
    assert region.box == (0, 0, 333, 517) and region.work_size == (330, 512)
    (region,) = plan_regions(np.ones((517, 333), np.uint8), CROP, 512, 8)
    assert region.work_size == (328, 512)


def test_cut_keeps_thin_strokes_when_shrinking():
    img = np.zeros((3000, 4000, 3), np.uint8)
    m = np.zeros((3000, 4000), np.uint8)
    m[1500, :] = 255  # one-pixel line across a frame shrunk 4x
    (region,) = plan_regions(m, FULL, 512)
    work_img, work_mask = cut(img, m, region)
    assert work_img.shape == (768, 1024, 3) and work_mask.shape == (768, 1024)
    assert set(np.unique(work_mask)) == {0, 255}
    assert work_mask.any(axis=0).all()  # the line is unbroken at work size


def test_cut_and_paste_check_sizes():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(SizeMismatchError, match="mask is 9x10 but the image is 10x10"):
        cut(img, np.zeros((10, 9), np.uint8), Region((0, 0, 10, 10), (8, 8)))
    with pytest.raises(ModelError, match="for a 8x8 region"):
        paste(img, np.ones((10, 10), np.float32), [(Region((0, 0, 10, 10), (8, 8)), img)])


def test_region_round_trips_through_a_dict():
    r = Region((1, 2, 30, 40), (32, 40))
    assert Region.from_dict(r.to_dict()) == r


@st.composite
def cases(draw):
    h, w = draw(
        st.one_of(
            st.sampled_from([(333, 517), (517, 333), (1, 1), (7, 3000), (3000, 7)]),
            st.tuples(st.integers(1, 300), st.integers(1, 300)),
        )
    )
    x0, y0 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
    x1, y1 = draw(st.integers(x0 + 1, w)), draw(st.integers(y0 + 1, h))
    opts = MaskOptions(dilate=draw(st.integers(0, 6)), feather=draw(st.integers(0, 6)))
    mode = draw(st.sampled_from(["full", "crop"]))
    native, multiple = draw(st.sampled_from([(512, 8), (None, 1), (256, 64)]))
    return h, w, (x0, y0, x1, y1), opts, mode, native, multiple, draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_paste_never_changes_a_pixel_outside_the_soft_mask(case):
    h, w, box, opts, mode, native, multiple, seed = case
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hard, soft = finish_mask(box_mask(h, w, box), opts)
    regions = plan_regions(soft > 0, GeometryOptions(mode=mode), native, multiple)
    pieces = []
    for region in regions:
        work_img, work_mask = cut(image, hard, region)
        assert work_img.shape[:2] == work_mask.shape == region.work_size[::-1]
        assert all(v % multiple == 0 for v in region.work_size)
        result = rng.integers(0, 256, work_img.shape, dtype=np.uint8)  # any model output
        pieces.append((region, result))
    out = paste(image, soft, pieces)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[soft == 0], image[soft == 0])
    # and every pixel that must change lies in some region
    covered = np.zeros((h, w), bool)
    for r in regions:
        covered[r.box[1] : r.box[3], r.box[0] : r.box[2]] = True
    assert covered[soft > 0].all()


def _blend(original, soft_u8, result):
    """What paste's soft blend gives: float weights, rounded once (the feathered path)."""
    s = soft_u8.astype(np.float32)[..., None] / 255.0
    b = original.astype(np.float32) * (1.0 - s) + result.astype(np.float32) * s
    return np.clip(np.rint(b), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32])
def test_paste_of_a_hard_mask_copies_the_result_where_masked(dtype):
    """No feather (weights 0 or full): the masked pixels are the result's, bit for bit, and the
    rest the original's, the same pixels the blend gives, for each dtype a soft mask comes in."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    result = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = box_mask(40, 50, (5, 6, 20, 30), (30, 2, 45, 9))
    soft = {bool: mask, np.uint8: mask.astype(np.uint8) * 255, np.float32: mask * 1.0}[dtype]
    out = paste(image, np.asarray(soft, dtype), [(Region((0, 0, 50, 40), (50, 40)), result)])
    assert np.array_equal(out[mask], result[mask])
    assert np.array_equal(out[~mask], image[~mask])
    assert np.array_equal(out, _blend(image, mask.astype(np.uint8) * 255, result))
    assert not np.shares_memory(out, image)


def test_paste_blends_a_feathered_mask_and_copies_its_full_weights():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    result = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # resized up to the box
    soft = np.zeros((32, 32), np.uint8)
    soft[8:24, 8:24] = 255
    soft[6:8, 6:26] = 128  # a partial-weight ring on one side
    out = paste(image, soft, [(Region((0, 0, 32, 32), (16, 16)), result)])
    assert np.array_equal(out, _blend(image, soft, resize_image(result, (32, 32))))
    assert np.array_equal(out[soft == 0], image[soft == 0])
