"""Masks: from images, alpha, boxes and polygons to the hard and soft masks the pipeline uses.

Convention everywhere: True / white = pixels to inpaint. A mask image's pixel is filled when any
of its colour channels is above the threshold (red strokes on black count), times its alpha
where it has one (transparent = keep). docs/masks.md.
"""

from __future__ import annotations

import json
import math
from typing import Any

import cv2
import numpy as np
from PIL import Image

from batch_inpaint.errors import MaskError, SizeMismatchError
from batch_inpaint.image.codec import DEFAULT_MAX_PIXELS, open_image
from batch_inpaint.params import MaskOptions

_MAX_COORD = 1_000_000  # keeps coordinates inside OpenCV's fixed-point range


def mask_from_image(
    data: bytes | np.ndarray | Image.Image,
    size: tuple[int, int] | None = None,
    options: MaskOptions = MaskOptions(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    concerns: list[str] | None = None,
) -> np.ndarray:
    """A bool HxW mask from mask-image bytes, a PIL image or an array; `size` is the image's (w, h).

    A pixel is masked when its brightest channel is above `threshold` of full scale, so a mask
    painted in any colour on black works (luminance would read pure red as 0.3, below 0.5).
    Where the mask has alpha, transparent counts as black, so a painted layer with strokes on a
    transparent background works. `concerns` (a list): the mask_concerns found are appended.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = open_image(data, max_pixels)  # EXIF-transposed, like its image
    frac = _image_fraction(data) if isinstance(data, Image.Image) else _array_fraction(data)
    mask = frac > options.threshold
    if options.invert:
        mask = ~mask
    if concerns is not None:
        concerns += mask_concerns(mask, frac, size)
    return fit_mask(mask, size, options.resize)


GREY_SHARE = 0.5  # a mask with more grey pixels than this is a photo or a soft mask, not a mask
COVERS_MOST = 0.9  # a mask filling more than this share of its image is probably inverted


def mask_concerns(mask: np.ndarray, frac: np.ndarray | None = None,
                  size: tuple[int, int] | None = None) -> list[str]:  # fmt: skip
    """Notes (each '<MaskConcern value>: why', no '; ' inside) on a mask that is probably not what was meant:
    empty, covering more than COVERS_MOST of the image, mostly grey (intensity between 0.1 and
    0.9: `frac`, the mask image's), or of another size than its image (w, h)."""
    from batch_inpaint.vocab import MaskConcern

    out = []
    share = float(mask.mean()) if mask.size else 0.0
    if not mask.any():
        out.append(f"{MaskConcern.EMPTY}: nothing to fill, the output is the input (a mask "
                   "image fills pixels whose brightest channel is above mask_threshold, black "
                   "strokes on white need --invert-mask)")  # fmt: skip
    elif share > COVERS_MOST:
        out.append(f"{MaskConcern.COVERS_MOST}: it covers {share:.0%} of the image (white = "
                   "inpaint; inverted? --invert-mask)")  # fmt: skip
    if frac is not None and frac.size:
        grey = float(((frac > 0.1) & (frac < 0.9)).mean())
        if grey > GREY_SHARE:
            out.append(f"{MaskConcern.GREY}: {grey:.0%} of its pixels are grey, neither black "
                       "nor white (a photo, or a soft mask cut at mask_threshold?)")  # fmt: skip
    if size is not None and (mask.shape[1], mask.shape[0]) != (int(size[0]), int(size[1])):
        out.append(f"{MaskConcern.SIZE}: it is {mask.shape[1]}x{mask.shape[0]}, its image "
                   f"{int(size[0])}x{int(size[1])} (resized only with --mask-resize)")  # fmt: skip
    return out


def fit_mask(mask: np.ndarray, size: tuple[int, int] | None, resize: bool = False) -> np.ndarray:
    """Check a bool mask against the image size (w, h); nearest-neighbour resize if allowed."""
    if size is None:
        return mask
    w, h = int(size[0]), int(size[1])
    mh, mw = mask.shape
    if (mw, mh) == (w, h):
        return mask
    if not resize:
        hint = " (rotated? EXIF orientation is applied to both)" if (mh, mw) == (w, h) else ""
        raise SizeMismatchError(
            f"mask is {mw}x{mh} but the image is {w}x{h}{hint}; fix the mask, or resize it with "
            "--mask-resize (mask_resize: true)"
        )
    small = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return small > 0


def _image_fraction(im: Image.Image) -> np.ndarray:
    """Mask intensity in [0, 1] for a PIL image of any mode."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode in ("I", "F"):
        return _array_fraction(np.asarray(im))
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info):
        return _array_fraction(np.asarray(im.convert("RGBA")))
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    return _array_fraction(np.asarray(im.convert("RGB")))  # palette, CMYK...: brightest channel


def _array_fraction(a: np.ndarray) -> np.ndarray:
    """Mask intensity in [0, 1] for an array: HxW or HxWx1/3/4, bool, integer or float [0, 1]."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise MaskError(f"mask array must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == bool:
        v = a.astype(np.float32)
    elif a.dtype == np.uint8:
        v = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        v = a.astype(np.float32) / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        v = np.nan_to_num(a.astype(np.float32), nan=0.0)
    elif np.issubdtype(a.dtype, np.integer):
        hi = float(a.max()) if a.size else 0.0
        v = a.astype(np.float32) / (255.0 if hi <= 255 else 65535.0 if hi <= 65535 else hi)
    else:
        raise MaskError(f"mask array dtype {a.dtype} is not supported")
    if v.ndim == 3:  # any channel above the threshold counts: the brightest one
        top = v[:, :, :3].max(axis=2)
        v = top * v[:, :, 3] if a.shape[2] == 4 else top
    return v


def mask_from_alpha(alpha: np.ndarray, options: MaskOptions = MaskOptions()) -> np.ndarray:
    """Bool HxW from an alpha channel: transparent (below `threshold` opacity) = to be filled."""
    opacity = _array_fraction(alpha)
    if opacity.ndim != 2:
        raise MaskError(f"alpha must be HxW, got shape {np.shape(alpha)}")
    mask = (1.0 - opacity) > options.threshold
    return ~mask if options.invert else mask


def _parse(value: Any, what: str) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise MaskError(f"{what} must be JSON or a list: {exc}") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise MaskError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _number(v: Any, where: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise MaskError(f"{where}: {v!r} is not a number") from None
    if not math.isfinite(f) or abs(f) > _MAX_COORD:
        raise MaskError(f"{where}: coordinate {v!r} is not finite or beyond +-{_MAX_COORD}")
    return f


def mask_from_boxes(boxes: Any, size: tuple[int, int]) -> np.ndarray:
    """Bool HxW from [[x0, y0, x1, y1], ...] in pixels (x1, y1 exclusive), clipped to the image.

    A single flat box and a JSON string are accepted too. Fractional edges grow outward.
    """
    boxes = _parse(boxes, "boxes")
    if len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
        boxes = [boxes]
    w, h = int(size[0]), int(size[1])
    mask = np.zeros((h, w), dtype=bool)
    for i, box in enumerate(boxes):
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise MaskError(f"box {i} {box!r} must be [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (_number(v, f"box {i}") for v in box)
        if x1 <= x0 or y1 <= y0:
            raise MaskError(
                f"box {i} {list(box)} is empty: boxes are [x0, y0, x1, y1] with x1 > x0, y1 > y0"
            )
        cx0, cy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        cx1, cy1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
        if cx1 > cx0 and cy1 > cy0:
            mask[cy0:cy1, cx0:cx1] = True
    return mask


def mask_from_polygons(polygons: Any, size: tuple[int, int]) -> np.ndarray:
    """Bool HxW from [[[x, y], ...], ...] or flat [[x0, y0, x1, y1, ...], ...] polygons.

    One polygon given as [[x, y], ...] works too; points outside the image are clipped.
    """
    polygons = _parse(polygons, "polygons")
    if polygons and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)
        for p in polygons
    ):
        polygons = [polygons]  # a single polygon of [x, y] points
    w, h = int(size[0]), int(size[1])
    canvas = np.zeros((h, w), dtype=np.uint8)
    shift = 4  # sub-pixel vertices: OpenCV takes fixed-point coordinates
    for i, poly in enumerate(polygons):
        if not isinstance(poly, (list, tuple)):
            raise MaskError(f"polygon {i} must be a list of points, got {poly!r}")
        flat = [v for p in poly for v in p] if poly and isinstance(poly[0], (list, tuple)) else poly
        if any(isinstance(p, (list, tuple)) and len(p) != 2 for p in poly) or len(flat) % 2:
            raise MaskError(f"polygon {i} has a point that is not [x, y]")
        if len(flat) < 6:
            raise MaskError(f"polygon {i} needs at least 3 points, got {len(flat) // 2}")
        pts = np.array([_number(v, f"polygon {i}") for v in flat], dtype=np.float64)
        # Pixels the outline passes through are masked too: a little more than the area, never less.
        pts = np.rint(pts.reshape(-1, 2) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=shift)
    return canvas > 0


def finish_mask(
    mask: np.ndarray, options: MaskOptions = MaskOptions()
) -> tuple[np.ndarray, np.ndarray]:
    """(hard uint8 0/255, soft float32 0..1): dilate by `dilate` px (round), then feather outward.

    soft is 1.0 on the dilated mask, falls linearly for pixels up to `feather` px outside it
    (1 - d / (feather + 1), so feather=1 is a one-pixel 0.5 ring) and is exactly 0.0 beyond:
    paste never touches a pixel further than dilate + feather from the mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskError(f"mask must be HxW, got shape {mask.shape}")
    mask = mask > 0 if mask.dtype != bool else mask
    hard = mask.astype(np.uint8) * 255
    soft = mask.astype(np.float32)
    reach = options.dilate + options.feather
    if reach == 0 or not mask.any():
        return hard, soft
    # Work in a window around the mask: a small mark on a 4K image costs a small distance map.
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0, y1 = max(0, ys.min() - reach - 1), min(h, ys.max() + reach + 2)
    x0, x1 = max(0, xs.min() - reach - 1), min(w, xs.max() + reach + 2)
    window = (~mask[y0:y1, x0:x1]).astype(np.uint8)
    dist = cv2.distanceTransform(window, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    inside = dist <= options.dilate
    hard[y0:y1, x0:x1] = inside.astype(np.uint8) * 255
    if options.feather:
        out = dist - options.dilate
        ramp = np.where(out <= options.feather, 1.0 - out / (options.feather + 1), 0.0)
        soft[y0:y1, x0:x1] = np.where(inside, 1.0, ramp).astype(np.float32)
    else:
        soft[y0:y1, x0:x1] = inside
    return hard, soft


# LaMa's irregular-mask settings for 256 px training crops, scaled to the image below:
# (max_angle, max_len, max_width, min_times, max_times).
_STROKES = {
    "thick": (4.0, 200, 100, 1, 5),
    "medium": (4.0, 100, 50, 2, 5),
    "thin": (4.0, 50, 10, 4, 30),
}
RANDOM_KINDS = ("mixed", "thick", "medium", "thin", "box")


def random_mask(
    height: int,
    width: int,
    seed: int,
    kind: str = "mixed",
    max_coverage: float | None = None,
) -> np.ndarray:
    """A LaMa-style random bool mask (brush strokes and boxes), the same for the same seed.

    `kind`: thick / medium / thin strokes, box, or mixed (strokes of a random width plus
    boxes). With `max_coverage`, shapes that would push the masked fraction over it are dropped.
    """
    if kind not in RANDOM_KINDS:
        raise MaskError(f"random mask kind must be one of {RANDOM_KINDS}, got {kind!r}")
    if height < 1 or width < 1:
        raise MaskError(f"random mask size must be positive, got {width}x{height}")
    if max_coverage is not None and not 0.0 < max_coverage <= 1.0:
        raise MaskError(f"max_coverage must be in (0, 1], got {max_coverage}")
    rng = np.random.default_rng(seed)
    scale = min(height, width) / 256.0
    shapes = []
    kinds = [kind] if kind != "mixed" else [str(rng.choice(["thick", "medium", "thin"])), "box"]
    for k in kinds:
        if k == "box":
            shapes += [_box(rng, height, width, scale) for _ in range(rng.integers(1, 4))]
        else:
            max_angle, max_len, max_width, lo, hi = _STROKES[k]
            n = int(rng.integers(lo, hi + 1))
            shapes += [
                _stroke(rng, height, width, max_angle, max_len * scale, max_width * scale)
                for _ in range(n)
            ]
    budget = height * width * (max_coverage if max_coverage is not None else 1.0)
    mask = np.zeros((height, width), dtype=bool)
    for shape in shapes:
        union = mask | shape
        if union.sum() <= budget:
            mask = union
    if not mask.any() and budget >= 1:  # every shape was too big: one square that fits
        side = max(1, min(height, width, int(math.isqrt(int(budget)))))
        y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        mask[y : y + side, x : x + side] = True
    return mask


def _stroke(rng, h: int, w: int, max_angle: float, max_len: float, max_width: float) -> np.ndarray:
    canvas = np.zeros((h, w), dtype=np.uint8)
    x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
    for i in range(int(rng.integers(1, 6))):
        angle = 0.01 + rng.uniform(0, max_angle)
        angle = 2 * math.pi - angle if i % 2 == 0 else angle
        length = 10 * min(1.0, max_len / 10) + rng.uniform(0, max_len)
        width = max(1, int(round(5 * min(1.0, max_width / 5) + rng.uniform(0, max_width))))
        nx = int(np.clip(x + length * math.sin(angle), 0, w - 1))
        ny = int(np.clip(y + length * math.cos(angle), 0, h - 1))
        cv2.line(canvas, (x, y), (nx, ny), 1, width)
        x, y = nx, ny
    return canvas > 0


def _box(rng, h: int, w: int, scale: float) -> np.ndarray:
    canvas = np.zeros((h, w), dtype=bool)
    bw = max(1, int(rng.integers(max(1, int(10 * scale)), max(2, int(100 * scale)) + 1)))
    bh = max(1, int(rng.integers(max(1, int(10 * scale)), max(2, int(100 * scale)) + 1)))
    bw, bh = min(bw, w), min(bh, h)
    x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    canvas[y : y + bh, x : x + bw] = True
    return canvas
