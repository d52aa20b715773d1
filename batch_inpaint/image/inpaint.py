"""One image, in process: finish mask -> plan -> cut -> model -> paste.

The job runs the same steps in separate stages; `prepare`, `run_model` and `compose` are those
steps, so both paths give the same pixels for the same seed. Both plan with a model spec's
native_size and size_multiple (models/spec.py): here the loaded model's `inpainter.spec`, in the
job the driver's `model_spec(...)`, which the model stage checks against the loaded model.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from batch_inpaint.errors import ConfigError, ModelError, SizeMismatchError
from batch_inpaint.image.geometry import Region, cut, mask_bbox, paste, plan_regions
from batch_inpaint.image.masks import finish_mask
from batch_inpaint.models.base import Inpainter
from batch_inpaint.params import GenerationParams, InpaintOptions


@dataclass
class InpaintResult:
    """`image` is images[0]; every image is RGB uint8 at the original size."""

    image: np.ndarray
    images: list[np.ndarray]
    status: str  # "ok" | "skipped" (nothing masked: the original, unchanged)
    regions: list[Region]
    seed: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Prepared:
    """What the model stage needs for one image: the regions and their work-size crops."""

    hard: np.ndarray  # uint8 0/255, dilated
    soft: np.ndarray  # float32 0..1, feathered, on the 1/255 grid (quantize_soft)
    regions: list[Region]
    crops: list[np.ndarray]  # RGB uint8 per region, at its work size
    crop_masks: list[np.ndarray]  # uint8 0/255 per region


def region_seed(seed: int, index: int) -> int:
    """Region i's seed: the image seed for region 0 (so a one-region image reproduces with the
    plain pipeline and that seed), a stable hash of (seed, i) for the others."""
    if index == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def random_seed() -> int:
    return secrets.randbelow(2**31)


def prepare(
    image: np.ndarray,
    mask: np.ndarray,
    options: InpaintOptions,
    native_size: int | None,
    size_multiple: int,
) -> Prepared:
    """Finish the raw mask (bool HxW, nonzero = inpaint), plan the regions and cut them out.

    `native_size` and `size_multiple` are the model spec's (no default: a forgotten multiple
    would plan other working sizes than the model's and change the pixels)."""
    check_image(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise SizeMismatchError(
            f"mask is {mask.shape[1::-1]} but the image is {image.shape[1::-1]} (w, h)"
        )
    hard, soft = finish_mask(mask, options.mask)
    # Plan on every pixel paste may change, so a crop box always holds the whole feather.
    reach = soft > 0
    regions = plan_regions(reach, options.geometry, native_size, size_multiple)
    _quantize_in_place(soft, reach, regions)
    pieces = [cut(image, hard, r) for r in regions]
    return Prepared(hard, soft, regions, [p[0] for p in pieces], [p[1] for p in pieces])


def quantize_soft(soft: np.ndarray) -> np.ndarray:
    """The soft mask on the 1/255 grid (float32): the job carries it as one byte per pixel, so
    pasting with these weights gives the same pixels in process and in the job. 0 stays 0."""
    return np.round(np.clip(soft, 0.0, 1.0) * 255).astype(np.uint8).astype(np.float32) / 255.0


def _quantize_in_place(soft: np.ndarray, reach: np.ndarray, regions: Sequence[Region]) -> None:
    """quantize_soft(soft), in place, computed only where soft > 0 (`reach`): 0 stays 0, so on a
    4K frame with a few small marks this skips several full-frame float passes. Within the
    regions' boxes when they hold every such pixel (the plan makes them), else within its box."""
    boxes = [r.box for r in regions]
    inside = sum(int(np.count_nonzero(reach[y0:y1, x0:x1])) for x0, y0, x1, y1 in boxes)
    if inside != int(np.count_nonzero(reach)):
        touched = mask_bbox(reach)
        boxes = [touched] if touched is not None else []
    for x0, y0, x1, y1 in boxes:
        touched = mask_bbox(reach[y0:y1, x0:x1])  # a region's box is mostly context
        if touched is not None:
            ys, xs = (
                slice(y0 + touched[1], y0 + touched[3]),
                slice(x0 + touched[0], x0 + touched[2]),
            )
            soft[ys, xs] = quantize_soft(soft[ys, xs])


def run_model(
    inpainter: Inpainter,
    crops: Sequence[np.ndarray],
    crop_masks: Sequence[np.ndarray],
    params: GenerationParams,
    seeds: Sequence[int],
) -> list[list[np.ndarray]]:
    """Per crop, `num_images_per_prompt` results; crops of one work size share a forward pass."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, crop in enumerate(crops):
        groups[crop.shape].append(i)
    k = params.num_images_per_prompt
    out: list[list[np.ndarray]] = [[] for _ in crops]
    for idx in groups.values():
        n = len(idx)
        flat = inpainter.inpaint(
            [crops[i] for i in idx],
            [crop_masks[i] for i in idx],
            params,
            [params.prompt] * n,
            [params.negative_prompt] * n,
            [seeds[i] for i in idx],
        )
        if len(flat) != n * k:
            raise ModelError(f"model returned {len(flat)} images for {n} inputs x {k} each")
        for j, i in enumerate(idx):
            out[i] = list(flat[j * k : (j + 1) * k])
    return out


def compose(
    image: np.ndarray,
    soft: np.ndarray,
    regions: Sequence[Region],
    results: Sequence[Sequence[np.ndarray]],
) -> list[np.ndarray]:
    """Variant j of the full image from variant j of every region's results."""
    k = min((len(r) for r in results), default=0)
    return [
        paste(image, soft, [(reg, res[j]) for reg, res in zip(regions, results, strict=True)])
        for j in range(k)
    ]


def inpaint_array(
    image: np.ndarray,
    mask: np.ndarray,
    inpainter: Inpainter,
    options: InpaintOptions = InpaintOptions(),
    seed: int | None = None,
) -> InpaintResult:
    """Inpaint one RGB uint8 image where `mask` (bool HxW) is set; the rest stays bit for bit.

    Seed: the argument, else options.generation.seed, else a random one (reported in the result).
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    seed = seed if seed is not None else options.generation.seed
    seed = random_seed() if seed is None else int(seed)
    if not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be in [0, 2**63), got {seed}")
    params = options.generation
    spec = inpainter.spec
    prep = prepare(image, mask, options, spec.native_size, spec.size_multiple)
    timings["prepare"] = time.perf_counter() - t
    if not prep.regions:
        original = image.copy()
        return InpaintResult(original, [original], "skipped", [], seed, timings)

    t = time.perf_counter()
    seeds = [region_seed(seed, i) for i in range(len(prep.regions))]
    results = run_model(inpainter, prep.crops, prep.crop_masks, params, seeds)
    timings["model"] = time.perf_counter() - t

    t = time.perf_counter()
    images = compose(image, prep.soft, prep.regions, results)
    timings["paste"] = time.perf_counter() - t
    return InpaintResult(images[0], images, "ok", prep.regions, seed, timings)


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ConfigError(
            "image must be an RGB uint8 HxWx3 array (image.codec.load_array makes one), got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )
    if image.shape[2] != 3:
        raise ConfigError(f"image must have 3 channels (RGB), got shape {image.shape}")
