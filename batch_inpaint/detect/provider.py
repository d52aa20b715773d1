"""MaskProvider: detector (+ optional SAM) + options, loaded once, then batch in, batch out:
`masks(images, queries)` gives each image its detections and the bool mask made from them. What
`batch-inpaint detect` runs per batch, and what a job stage's actor would hold."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batch_inpaint.detect.base import (
    DEFAULT_MAX_DETECTIONS,
    TEXT_QUERIES,
    Detection,
    Detector,
    RoutedDetector,
    check_threshold,
    parse_queries,
)
from batch_inpaint.detect.masks import mask_from_detections
from batch_inpaint.errors import ConfigError

NONE = ("", "none", "off")  # a model argument that turns that provider off


@dataclass
class DetectResult:
    """One image's detections (best first) and its mask (bool HxW; all False when none)."""

    detections: list[Detection]
    mask: np.ndarray
    segmented: bool = False  # the mask is SAM's, not the boxes'

    @property
    def found(self) -> bool:
        return bool(self.detections) and bool(self.mask.any())


@dataclass
class MaskProvider:
    detector: Detector
    segmenter: Any = None  # a SamSegmenter, or None for box masks
    threshold: float | None = None  # None: each provider's default
    max_detections: int | None = DEFAULT_MAX_DETECTIONS
    dilate: int = 0  # px added around each detection's mask
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold is not None:
            self.threshold = check_threshold(self.threshold)
        if not isinstance(self.dilate, int) or not 0 <= self.dilate <= 512:
            raise ConfigError(f"dilate must be an integer in [0, 512] px, got {self.dilate!r}")

    @classmethod
    def load(
        cls,
        *,
        detector: str | os.PathLike | None = None,
        detector_revision: str | None = None,
        text_detector: str | os.PathLike | None = None,
        text_detector_revision: str | None = None,
        text_queries: Iterable[str] = TEXT_QUERIES,
        text_threshold: float | None = None,
        text_min_confidence: float | None = None,
        segmenter: str | os.PathLike | None = None,
        segmenter_revision: str | None = None,
        queries: Iterable[str] | None = None,
        device: str = "auto",
        dtype: Any = None,
        storage: Any = None,
        cache_dir: str | os.PathLike | None = None,
        **options: Any,
    ) -> MaskProvider:
        """Load the providers the queries need. detector / text_detector: a Hub id, folder or
        URI; None: the default model (for text, the one the rapidocr wheel ships, also named
        'rapidocr'); 'none': off (its queries go to the other). With `queries` given, a provider
        none of them is routed to is not loaded. segmenter None/'none': boxes.
        text_min_confidence: keep only text lines the shipped recogniser reads at least this
        well (None: every line)."""
        from batch_inpaint.detect.grounding import DEFAULT_DETECTOR, GroundingDinoDetector

        common = dict(device=device, dtype=dtype, storage=storage, cache_dir=cache_dir)
        tq = set(parse_queries(list(text_queries), "text queries"))
        qs = None if queries is None else parse_queries(list(queries))
        want_text = _on(text_detector) and (qs is None or any(q in tq for q in qs))
        want_open = _on(detector) and (qs is None or not want_text or any(q not in tq for q in qs))
        if not want_open and not want_text:
            raise ConfigError("no detector: give a detector or a text detector (not both 'none')")
        text = (
            load_text_detector(text_detector, text_detector_revision, text_min_confidence,
                               **common)
            if want_text else None
        )  # fmt: skip
        open_vocab = (
            GroundingDinoDetector(detector or DEFAULT_DETECTOR, revision=detector_revision,
                                  **common)
            if want_open else None
        )  # fmt: skip
        routed = RoutedDetector(open_vocab, text, tq, text_threshold)
        seg = None
        if _on(segmenter) and segmenter is not None:
            from batch_inpaint.detect.segment import SamSegmenter

            seg = SamSegmenter(segmenter, revision=segmenter_revision, **common)
        return cls(routed, seg, **options)

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.detector.describe(),
            "segmenter": self.segmenter.describe() if self.segmenter is not None else None,
            "threshold": self.threshold,
            "max_detections": self.max_detections,
            "dilate": self.dilate,
        }

    def masks(
        self, images: Sequence[np.ndarray], queries: Sequence[Sequence[str]]
    ) -> list[DetectResult]:
        """Per image: its detections and their mask (boxes, or SAM's masks of the boxes)."""
        found = self.detector.detect(images, queries, self.threshold,
                                     max_detections=self.max_detections)  # fmt: skip
        segments: list[list[np.ndarray] | None] = [None] * len(images)
        if self.segmenter is not None:
            boxes = [[d.box for d in dets] for dets in found]
            segments = list(self.segmenter.segment(images, boxes))
        out = []
        for im, dets, seg in zip(images, found, segments, strict=True):
            size = (im.shape[1], im.shape[0])
            mask = mask_from_detections(dets, size, dilate_px=self.dilate,
                                        segments=seg if seg else None)  # fmt: skip
            out.append(DetectResult(dets, mask, segmented=bool(seg)))
        return out


def load_text_detector(model: Any, revision: str | None = None,
                       min_confidence: float | None = None, **common: Any) -> Detector:  # fmt: skip
    """The shipped detector for None / 'rapidocr' (onnxruntime, no download), else a PP-OCR
    checkpoint through transformers; with min_confidence, its lines must read that well."""
    from batch_inpaint.detect.shipped import OnnxTextDetector, TextReader, is_shipped

    if is_shipped(model):
        det: Any = OnnxTextDetector(model)
    else:
        from batch_inpaint.detect.text import PPOCRTextDetector

        det = PPOCRTextDetector(model, revision=revision, **common)
    if min_confidence is not None:
        det.read_with(TextReader(), check_threshold(min_confidence, "text_min_confidence"))
    return det


def _on(model: Any) -> bool:
    return model is None or str(model).strip().lower() not in NONE
