"""The crop path's CPU steps as they were before the cuts recorded by `python -m bench crop`
(verbatim copies of image/inpaint.prepare and image/geometry.plan_regions / paste of that
time), so one run measures before and after side by side on the same inputs and checks that
both give the same pixels. Nothing else imports this."""

from __future__ import annotations

import cv2
import numpy as np

from batch_inpaint.errors import ModelError, SizeMismatchError
from batch_inpaint.image.geometry import (
    DEFAULT_CROP_SIZE,
    Region,
    _context_box,
    _overlap,
    _work_size,
    cut,
    resize_image,
)
from batch_inpaint.image.inpaint import Prepared, check_image
from batch_inpaint.image.masks import finish_mask


def prepare(image, mask, options, native_size, size_multiple) -> Prepared:
    check_image(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise SizeMismatchError(
            f"mask is {mask.shape[1::-1]} but the image is {image.shape[1::-1]} (w, h)"
        )
    hard, soft = finish_mask(mask, options.mask)
    regions = plan_regions(
        (soft > 0).astype(np.uint8), options.geometry, native_size, size_multiple
    )
    soft = quantize_soft(soft)
    pieces = [cut(image, hard, r) for r in regions]
    return Prepared(hard, soft, regions, [p[0] for p in pieces], [p[1] for p in pieces])


def quantize_soft(soft: np.ndarray) -> np.ndarray:
    return np.round(np.clip(soft, 0.0, 1.0) * 255).astype(np.uint8).astype(np.float32) / 255.0


def plan_regions(hard_mask, geometry, native_size, size_multiple=8) -> list[Region]:
    import math

    mask = np.asarray(hard_mask) > 0
    if not mask.any():
        return []
    h, w = mask.shape
    if geometry.mode == "full":
        longest = min(geometry.max_side, max(native_size or 0, w, h))
        return [Region((0, 0, w, h), _work_size(w, h, longest, size_multiple))]
    side = geometry.crop_size or native_size or DEFAULT_CROP_SIZE
    side = math.ceil(side / size_multiple) * size_multiple
    boxes = _merged_boxes(mask, geometry, side)
    as_is = native_size is None and geometry.crop_size is None
    regions = []
    for b in boxes:
        bw, bh = b[2] - b[0], b[3] - b[1]
        longest = min(side, max(bw, bh)) if as_is else side
        regions.append(Region(b, _work_size(bw, bh, longest, size_multiple)))
    return regions


def _merged_boxes(mask, geometry, side) -> list[tuple]:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    pad = geometry.merge_distance + 1
    wx0, wy0 = max(0, int(xs.min()) - pad), max(0, int(ys.min()) - pad)
    wx1, wy1 = min(w, int(xs.max()) + pad + 1), min(h, int(ys.max()) + pad + 1)
    window = mask[wy0:wy1, wx0:wx1]
    grown = window
    if geometry.merge_distance > 0:
        inv = (~window).astype(np.uint8)
        grown = cv2.distanceTransform(inv, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        grown = grown <= geometry.merge_distance / 2
    n, labels = cv2.connectedComponents(grown.astype(np.uint8), connectivity=8)
    lab = labels[ys - wy0, xs - wx0]
    lo_x, lo_y = np.full(n, w), np.full(n, h)
    hi_x, hi_y = np.full(n, -1), np.full(n, -1)
    np.minimum.at(lo_x, lab, xs)
    np.minimum.at(lo_y, lab, ys)
    np.maximum.at(hi_x, lab, xs)
    np.maximum.at(hi_y, lab, ys)
    groups = [
        (int(lo_x[i]), int(lo_y[i]), int(hi_x[i]) + 1, int(hi_y[i]) + 1)
        for i in range(1, n)
        if hi_x[i] >= 0
    ]
    merged = True
    while merged:
        merged = False
        ctx = [_context_box(g, w, h, geometry, side) for g in groups]
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if _overlap(ctx[i], ctx[j]):
                    a, b = groups[i], groups[j]
                    groups[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(_context_box(g, w, h, geometry, side) for g in groups)


def paste(original, soft_mask, pieces) -> np.ndarray:
    original = np.asarray(original)
    soft = np.asarray(soft_mask)
    if soft.dtype == bool:
        soft = soft.astype(np.float32)
    elif soft.dtype == np.uint8:
        soft = soft.astype(np.float32) / 255.0
    out = original.copy()
    for region, result in pieces:
        ww, wh = region.work_size
        if result.shape[:2] != (wh, ww) or result.ndim != 3 or result.shape[2] != 3:
            raise ModelError(f"model returned {result.shape} for a {ww}x{wh} region")
        x0, y0, x1, y1 = region.box
        s = soft[y0:y1, x0:x1]
        ys, xs = np.nonzero(s > 0)
        if len(ys) == 0:
            continue
        res = resize_image(result, (x1 - x0, y1 - y0))
        wy, wx = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        s = s[wy, wx].astype(np.float32)[..., None]
        base = out[y0:y1, x0:x1][wy, wx]
        blend = base.astype(np.float32) * (1.0 - s) + res[wy, wx].astype(np.float32) * s
        blend = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        out[y0:y1, x0:x1][wy, wx] = np.where(s > 0, blend, base)
    return out
