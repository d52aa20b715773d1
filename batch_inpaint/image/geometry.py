"""Which pixels go to the model at what size, and pasting results back.

`full` sends the whole frame (resized so its longest side is the model's native size or the
image's own, capped at max_side). `crop` sends a box around each masked region at the model's
native size, so a small mark on a 4K photo costs one 512x512 inpaint. Either way paste changes
no pixel whose soft mask is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from batch_inpaint.errors import ConfigError, ModelError, SizeMismatchError
from batch_inpaint.params import GeometryOptions

DEFAULT_CROP_SIZE = 512  # crop side for models with no native size (the opencv backend)


@dataclass(frozen=True)
class Region:
    """A box of the original image (x0, y0, x1, y1; x1, y1 exclusive) and the (w, h) it is
    inpainted at."""

    box: tuple[int, int, int, int]
    work_size: tuple[int, int]

    def to_dict(self) -> dict:
        return {"box": list(self.box), "work_size": list(self.work_size)}

    @classmethod
    def from_dict(cls, d: dict) -> Region:
        return cls(
            box=tuple(int(v) for v in d["box"]), work_size=tuple(int(v) for v in d["work_size"])
        )


def plan_regions(
    hard_mask: np.ndarray,
    geometry: GeometryOptions,
    native_size: int | None,
    size_multiple: int = 8,
) -> list[Region]:
    """The regions to inpaint for a mask (nonzero = masked); [] when nothing is masked.

    Pass every pixel paste may change (finish_mask's `soft > 0`) so crop boxes hold the feather
    too; the hard mask works when there is no feather.
    """
    mask = np.asarray(hard_mask)
    if mask.ndim != 2:
        raise ConfigError(f"mask must be HxW, got shape {mask.shape}")
    if size_multiple < 1:
        raise ConfigError(f"size_multiple must be >= 1, got {size_multiple}")
    mask = mask > 0
    if not mask.any():
        return []
    h, w = mask.shape
    if geometry.mode == "full":
        longest = min(geometry.max_side, max(native_size or 0, w, h))
        return [Region((0, 0, w, h), _work_size(w, h, longest, size_multiple))]
    side = geometry.crop_size or native_size or DEFAULT_CROP_SIZE
    side = math.ceil(side / size_multiple) * size_multiple
    boxes = _merged_boxes(mask, geometry, side)
    # A model with no native size (opencv) works on a box smaller than `side` as it is.
    as_is = native_size is None and geometry.crop_size is None
    regions = []
    for b in boxes:
        bw, bh = b[2] - b[0], b[3] - b[1]
        longest = min(side, max(bw, bh)) if as_is else side
        regions.append(Region(b, _work_size(bw, bh, longest, size_multiple)))
    return regions


def _work_size(w: int, h: int, longest: int, multiple: int) -> tuple[int, int]:
    """(w, h) scaled so the longer side is `longest`, each rounded to a multiple (at least one)."""
    scale = longest / max(w, h)

    def fit(v: float) -> int:
        return max(multiple, math.floor(v * scale / multiple + 0.5) * multiple)  # half up

    return fit(w), fit(h)


# More components than this go the general way (a pairwise check costs n² small steps).
FAST_COMPONENTS = 256


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive ends, of a 2-D mask's nonzero pixels; None when there are
    none. Two reductions, not np.nonzero: no index arrays for a large mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _merged_boxes(mask: np.ndarray, geometry: GeometryOptions, side: int) -> list[tuple]:
    """Context boxes of the masked regions: near regions merged, boxes never overlapping."""
    h, w = mask.shape
    apart = _apart_components(mask, geometry, side)
    if apart is not None:
        return sorted(_context_box(g, w, h, geometry, side) for g in apart)
    # Regions closer than merge_distance touch once each grows by half of it; a distance map
    # does that growth in one pass, in a window around the mask.
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
    # Bounding boxes of the real mask pixels per grown component, not of the grown ones.
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
    # Overlapping boxes would paste over each other's results: merge until none overlap.
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


def _apart_components(mask: np.ndarray, geometry: GeometryOptions, side: int) -> list[tuple] | None:
    """The boxes of the mask's 8-connected components when merging has nothing to do: no two
    closer than merge_distance + 2 px (so the grown regions below never join two of them) and
    no two context boxes overlapping. None otherwise: the general way then decides. A few
    watermark boxes scattered over a 4K frame skip its distance transform of the whole frame."""
    h, w = mask.shape
    found: list[tuple[int, int, int, int]] = []
    if not _component_boxes(mask, (0, 0, w, h), found):
        return None
    bx0, by0, bx1, by1 = (np.array(v, np.int64) for v in zip(*found, strict=True))
    # empty columns (rows) between two boxes; negative when they overlap in x (y)
    gap_x = np.maximum(bx0[:, None] - bx1[None, :], bx0[None, :] - bx1[:, None])
    gap_y = np.maximum(by0[:, None] - by1[None, :], by0[None, :] - by1[:, None])
    gap = np.maximum(gap_x, gap_y)
    np.fill_diagonal(gap, np.iinfo(gap.dtype).max)
    if (gap <= geometry.merge_distance + 2).any():
        return None
    groups = [
        (int(a), int(b), int(c), int(d)) for a, b, c, d in zip(bx0, by0, bx1, by1, strict=True)
    ]
    ctx = [_context_box(g, w, h, geometry, side) for g in groups]
    for i in range(len(ctx)):
        for j in range(i + 1, len(ctx)):
            if _overlap(ctx[i], ctx[j]):
                return None
    return groups


def _component_boxes(mask: np.ndarray, window: tuple[int, int, int, int], found: list) -> bool:
    """Append the boxes of the 8-connected components of mask[window] to `found`; False once
    there are more than FAST_COMPONENTS. Empty rows and columns split the window first (pixels
    on either side of one are never 8-connected), so the labelling runs on small windows around
    the marks, not on the frame between them."""
    x0, y0, x1, y1 = window
    sub = mask[y0:y1, x0:x1]
    row_runs = _runs(sub.any(axis=1))
    for ra, rb in row_runs:
        band = sub[ra:rb]
        col_runs = _runs(band.any(axis=0))
        if len(row_runs) > 1 or len(col_runs) > 1:
            for ca, cb in col_runs:
                if not _component_boxes(mask, (x0 + ca, y0 + ra, x0 + cb, y0 + rb), found):
                    return False
            continue
        ca, cb = col_runs[0]
        leaf = np.ascontiguousarray(band[:, ca:cb]).view(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(leaf, connectivity=8)
        for lx, ly, lw, lh, _ in stats[1:n]:
            bx, by = x0 + ca + int(lx), y0 + ra + int(ly)
            found.append((bx, by, bx + int(lw), by + int(lh)))
        if len(found) > FAST_COMPONENTS:
            return False
    return True


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a 1-D bool array, end exclusive."""
    edges = np.diff(np.concatenate(([0], flags.view(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(),
                    strict=True))  # fmt: skip


def _context_box(bbox: tuple, w: int, h: int, geometry: GeometryOptions, side: int) -> tuple:
    """bbox plus margin, grown to a square of at least `side` (no upscaling) where the image
    allows, shifted inside the image and clamped to it."""
    x0, y0, x1, y1 = bbox
    bw, bh = x1 - x0, y1 - y0
    margin = max(geometry.min_margin, geometry.margin * max(bw, bh))
    box_side = max(math.ceil(max(bw, bh) + 2 * margin), side)
    out = []
    for lo, hi, limit in ((x0, x1, w), (y0, y1, h)):
        size = min(box_side, limit)
        start = int(round((lo + hi) / 2 - size / 2))
        start = min(max(start, 0), limit - size)
        out.append((start, start + size))
    (bx0, bx1), (by0, by1) = out
    return bx0, by0, bx1, by1


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def resize_image(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an image to (w, h): area averaging to shrink, bicubic to grow, a copy if equal."""
    w, h = size
    if a.shape[1] == w and a.shape[0] == h:
        return np.ascontiguousarray(a).copy()
    shrink = w <= a.shape[1] and h <= a.shape[0]
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def cut(image: np.ndarray, hard_mask: np.ndarray, region: Region) -> tuple[np.ndarray, np.ndarray]:
    """The region's pixels and mask at its work size (RGB uint8, mask uint8 0/255).

    The mask is resized conservatively: a work pixel touching any masked pixel is masked, so
    thin strokes survive shrinking.
    """
    if image.shape[:2] != hard_mask.shape[:2]:
        raise SizeMismatchError(
            f"mask is {hard_mask.shape[1]}x{hard_mask.shape[0]} but the image is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    x0, y0, x1, y1 = region.box
    crop = image[y0:y1, x0:x1]
    m = (hard_mask[y0:y1, x0:x1] > 0).view(np.uint8) * np.uint8(255)
    if (m.shape[1], m.shape[0]) != region.work_size:
        m = cv2.resize(m, region.work_size, interpolation=cv2.INTER_AREA)
        m = np.where(m > 0, 255, 0).astype(np.uint8)
    return resize_image(crop, region.work_size), m


def paste(
    original: np.ndarray,
    soft_mask: np.ndarray,
    pieces: Sequence[tuple[Region, np.ndarray]],
) -> np.ndarray:
    """Composite each region's result into the original through the soft mask, at original size.

    Blending is in float, rounded once; pixels where soft is 0 are copied, bit for bit.
    """
    original = np.asarray(original)
    soft = np.asarray(soft_mask)
    if soft.shape != original.shape[:2]:
        raise SizeMismatchError(
            f"soft mask is {soft.shape[1::-1]} but the image is {original.shape[1::-1]} (w, h)"
        )
    out = original.copy()
    for region, result in pieces:
        ww, wh = region.work_size
        if result.shape[:2] != (wh, ww) or result.ndim != 3 or result.shape[2] != 3:
            raise ModelError(
                f"model returned an image of shape {result.shape} for a {ww}x{wh} region"
            )
        x0, y0, x1, y1 = region.box
        s = soft[y0:y1, x0:x1]
        touched = mask_bbox(s > 0)
        if touched is None:
            continue
        same = result.shape[:2] == (y1 - y0, x1 - x0)  # only read: no copy at the box's size
        res = result if same else resize_image(result, (x1 - x0, y1 - y0))
        # Blend (and make weights) only in the window the soft mask touches: a small mark on a
        # 4K frame costs its own size, not the frame's.
        tx0, ty0, tx1, ty1 = touched
        wy, wx = slice(ty0, ty1), slice(tx0, tx1)
        base = out[y0:y1, x0:x1][wy, wx]
        hard = _hard(s[wy, wx])
        if hard is not None:  # no feather: weights 0 or 1, so the blend is the result itself
            # OpenCV's masked copy: ~100x numpy's broadcast copyto; on copies, as a view of a
            # window is not something it writes into
            src = np.ascontiguousarray(res[wy, wx])
            base[...] = cv2.copyTo(src, hard.view(np.uint8), np.ascontiguousarray(base))
            continue
        s = _weights(s[wy, wx])[..., None]
        blend = base.astype(np.float32) * (1.0 - s) + res[wy, wx].astype(np.float32) * s
        blend = np.clip(np.rint(blend, out=blend), 0, 255, out=blend).astype(np.uint8)
        out[y0:y1, x0:x1][wy, wx] = np.where(s > 0, blend, base)
    return out


def _hard(soft: np.ndarray) -> np.ndarray | None:
    """`soft > 0` when every nonzero weight is full (bool, uint8 255 or 1.0), else None."""
    if soft.dtype == bool:
        return soft
    full = 255 if soft.dtype == np.uint8 else 1.0
    touched = soft > 0
    return touched if np.count_nonzero(touched) == np.count_nonzero(soft == full) else None


def _weights(soft: np.ndarray) -> np.ndarray:
    """Paste weights (float32 0..1) of a soft mask given as bool, uint8 0..255 or float."""
    if soft.dtype == bool:
        return soft.astype(np.float32)
    if soft.dtype == np.uint8:
        return soft.astype(np.float32) / 255.0
    return soft.astype(np.float32)
