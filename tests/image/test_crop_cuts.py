"""The cheaper crop path gives the same plans, soft masks, crops and pasted pixels, bit for bit,
as it did before its cuts (kept verbatim in bench/crop_before.py for `python -m bench crop`):
far-apart marks skip the distance transform, quantizing and paste weights stay near the marks."""

from __future__ import annotations

import numpy as np
import pytest

from batch_inpaint.image import geometry, inpaint, masks
from batch_inpaint.params import GeometryOptions, InpaintOptions, MaskOptions
from bench import crop_before as before


def random_case(i: int):
    rng = np.random.default_rng(i)
    h, w = int(rng.integers(16, 700)), int(rng.integers(16, 900))
    if i % 3 == 0:
        mask = masks.random_mask(h, w, seed=i) > 0
    else:  # a few boxes, sometimes far apart (the fast path), sometimes near (merged)
        mask = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(1, 7))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            mask[y : y + int(rng.integers(1, 60)), x : x + int(rng.integers(1, 90))] = True
    options = InpaintOptions(
        mask=MaskOptions(dilate=int(rng.integers(0, 5)), feather=int(rng.integers(0, 6))),
        geometry=GeometryOptions(
            mode="crop",
            merge_distance=int(rng.choice([0, 8, 32, 64])),
            crop_size=int(rng.choice([64, 128, 256])) if i % 2 else None,
            margin=float(rng.choice([0.1, 0.25])),
            min_margin=int(rng.choice([4, 16])),
        ),
    )
    native = int(rng.choice([64, 128, 512])) if i % 4 else None
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, mask, options, native, rng


@pytest.mark.parametrize("chunk", range(4))
def test_cut_crop_path_gives_the_same_pixels_as_before(chunk):
    for i in range(chunk * 40, chunk * 40 + 40):
        image, mask, options, native, rng = random_case(i)
        new = inpaint.prepare(image, mask, options, native, 8)
        old = before.prepare(image, mask, options, native, 8)
        assert new.regions == old.regions, i
        assert new.soft.dtype == old.soft.dtype and np.array_equal(new.soft, old.soft), i
        assert np.array_equal(new.hard, old.hard), i
        for a, b, c, d in zip(new.crops, old.crops, new.crop_masks, old.crop_masks, strict=True):
            assert np.array_equal(a, b) and np.array_equal(c, d), i
        results = [rng.integers(0, 256, (*r.work_size[::-1], 3), dtype=np.uint8)
                   for r in new.regions]  # fmt: skip
        pieces = list(zip(new.regions, results, strict=True))
        soft8 = np.round(new.soft * 255).astype(np.uint8)
        for soft in (new.soft, soft8, new.soft > 0, new.soft.astype(np.float64)):
            assert np.array_equal(geometry.paste(image, soft, pieces),
                                  before.paste(image, soft, pieces)), i  # fmt: skip


def test_scattered_marks_on_a_large_frame_are_planned_apart():
    w, h = 3840, 2160
    boxes = [[100, 100, 300, 180], [1800, 900, 2000, 1000], [3500, 200, 3700, 260]]
    mask = masks.mask_from_boxes(boxes, (w, h))
    geometry_options = GeometryOptions(mode="crop")
    assert geometry._apart_components(mask, geometry_options, 512) is not None  # no transform
    regions = geometry.plan_regions(mask, geometry_options, 512, 8)
    assert regions == before.plan_regions(mask, geometry_options, 512, 8)
    assert len(regions) == 3 and all(r.work_size == (512, 512) for r in regions)
