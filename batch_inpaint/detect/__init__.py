"""Mask providers: find what to remove and make the mask for it, with no Ray and no job.

- `Detector.detect(images, queries, threshold)`: a batch of RGB uint8 images, one query list per
  image, one list of `Detection(label, score, box)` per image (box in the input's pixels).
  Providers: GroundingDinoDetector (open vocabulary), OnnxTextDetector (overlaid text, the model
  the rapidocr wheel ships, offline; the default), PPOCRTextDetector (text, PP-OCR checkpoints),
  RoutedDetector (text queries to the one, the rest to the other), BoxesDetector (given boxes).
- SamSegmenter refines boxes into pixel masks.
- mask_from_detections / MaskProvider: detections to the HxW bool mask the package uses.

Models load like the inpainting models (Hub id + revision, folder, s3://; safetensors only).
docs/masks.md has the models, licences, thresholds and the detect -> review -> run flow. Modules
that import torch are imported when used, so importing this package stays light."""

from __future__ import annotations

from typing import Any

from batch_inpaint.detect.base import (
    DEFAULT_MAX_DETECTIONS,
    TEXT_QUERIES,
    BoxesDetector,
    Detection,
    Detector,
    RoutedDetector,
    detections_arrow_type,
    image_digest,
    parse_queries,
)
from batch_inpaint.detect.masks import detection_boxes, mask_from_detections

_LAZY = {
    "GroundingDinoDetector": "grounding",
    "DEFAULT_DETECTOR": "grounding",
    "PPOCRTextDetector": "text",
    "DEFAULT_TEXT_DETECTOR": "text",
    "OnnxTextDetector": "shipped",
    "TextReader": "shipped",
    "SamSegmenter": "segment",
    "DEFAULT_SEGMENTER": "segment",
    "MaskProvider": "provider",
    "DetectResult": "provider",
    "make_tiny": "tiny",
}

__all__ = [
    "DEFAULT_MAX_DETECTIONS",
    "TEXT_QUERIES",
    "BoxesDetector",
    "Detection",
    "Detector",
    "RoutedDetector",
    "detection_boxes",
    "detections_arrow_type",
    "image_digest",
    "mask_from_detections",
    "parse_queries",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
