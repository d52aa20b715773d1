"""Masks from detections: the union of their boxes (image.masks.mask_from_boxes) or of their SAM
masks, grown by `dilate` pixels (image.masks.finish_mask), as the HxW bool mask the rest of the
package uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from batch_inpaint.detect.base import Detection
from batch_inpaint.image.masks import finish_mask, mask_from_boxes
from batch_inpaint.params import MaskOptions


def detection_boxes(detections: Sequence[Detection]) -> list[list[float]]:
    return [[float(v) for v in d.box] for d in detections]


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if not pixels:
        return mask
    hard, _ = finish_mask(mask, MaskOptions(dilate=int(pixels)))
    return hard > 0


def mask_from_detections(
    detections: Sequence[Detection],
    size: tuple[int, int],
    *,
    dilate_px: int = 0,
    segments: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Bool HxW for an image of size (w, h): the union of the detections' boxes, or of
    `segments` (one bool mask per detection, e.g. SamSegmenter's) when given, where a detection
    whose segment is empty keeps its box (a miss of the segmenter loses nothing); then dilated."""
    w, h = int(size[0]), int(size[1])
    if segments is not None:
        mask = np.zeros((h, w), dtype=bool)
        empty = []
        for d, s in zip(detections, segments, strict=True):
            s = np.asarray(s, dtype=bool)
            if s.any():
                mask |= s
            else:
                empty.append(d)
        if empty:
            mask |= mask_from_boxes(detection_boxes(empty), (w, h))
    elif detections:
        mask = mask_from_boxes(detection_boxes(detections), (w, h))
    else:
        mask = np.zeros((h, w), dtype=bool)
    return dilate(mask, dilate_px)
