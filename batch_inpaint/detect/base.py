"""What every mask provider shares: a Detection, the Detector interface (a batch of images in,
one list of detections per image out), and two providers that need no model: BoxesDetector
(given boxes, for tests and reviewed boxes) and RoutedDetector (text queries to a text detector,
the others to an open-vocabulary one).

A provider's result for an image never depends on what else is in the batch: the model providers
group a batch by input shape and queries, so nothing is ever padded to another image's size."""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batch_inpaint.detect.queries import parse_queries as parse_queries
from batch_inpaint.errors import ConfigError

DEFAULT_MAX_DETECTIONS = 100  # per image and provider, best scores first
NMS_IOU = 0.5  # boxes of one label overlapping more than this are one object
# Longer side / shorter side a model's processor is given; thinner strips are padded to it.
MAX_ASPECT = 8.0
MAX_SIDE = 2048  # a strip's longer side before padding: above what the processors resize to
PAD_RGB = (124, 116, 104)  # the ImageNet mean the processors subtract: ~0 after normalising


@dataclass(frozen=True)
class Detection:
    """One thing found: the query it answers, a score in [0, 1], and its box (x0, y0, x1, y1) in
    pixels of the input image, x1/y1 exclusive, clipped to the image."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": float(self.score),
            "box": [float(v) for v in self.box],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Detection:
        box = tuple(float(v) for v in d["box"])
        if len(box) != 4:
            raise ConfigError(f"detection box must be [x0, y0, x1, y1], got {d['box']!r}")
        return cls(str(d["label"]), float(d["score"]), box)  # type: ignore[arg-type]


def detections_arrow_type():
    """The Arrow type of a `detections` column: list<struct<label, score, box>>."""
    import pyarrow as pa

    return pa.list_(
        pa.struct(
            [("label", pa.string()), ("score", pa.float64()), ("box", pa.list_(pa.float64()))]
        )
    )


def image_digest(image: np.ndarray) -> str:
    """A stable id of an image's pixels (shape and bytes), for BoxesDetector's per-image boxes."""
    a = np.ascontiguousarray(image)
    return hashlib.sha256(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest()


def clip_box(
    box: Sequence[float], size: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """The box clipped to an image of size (w, h); None when nothing of it is left."""
    w, h = float(size[0]), float(size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
    y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def finalize(
    found: Iterable[Detection],
    size: tuple[int, int],
    threshold: float,
    max_detections: int | None,
    nms_iou: float | None = NMS_IOU,
) -> list[Detection]:
    """Clip to the image, keep scores >= threshold, drop same-label boxes overlapping a better one
    by more than nms_iou, best first (ties by label, then box), at most max_detections."""
    kept: list[Detection] = []
    for d in found:
        box = clip_box(d.box, size)
        if box is not None and d.score >= threshold:
            kept.append(Detection(d.label, float(d.score), box))
    kept.sort(key=lambda d: (-d.score, d.label, d.box))
    out: list[Detection] = []
    for d in kept:
        if nms_iou is not None and any(
            o.label == d.label and box_iou(o.box, d.box) > nms_iou for o in out
        ):
            continue
        out.append(d)
        if max_detections is not None and len(out) >= max_detections:
            break
    return out


def pad_to_aspect(
    image: np.ndarray, max_aspect: float = MAX_ASPECT, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, tuple[float, float]]:
    """(image, (sx, sy)): a strip thinner than 1:max_aspect shrunk to a longer side of at most
    max_side (the processors shrink it further anyway; this keeps the padding small), then padded
    at the bottom or right to 1:max_aspect. The processors resize by the shorter side, so a
    60000x10 strip would round a side to 0 and fail. A point (x, y) of the result is (x / sx,
    y / sy) in the image; boxes from the padding are clipped away. Other images: as they are."""
    h, w = image.shape[:2]
    if max(h, w) <= max_aspect * min(h, w):
        return image, (1.0, 1.0)
    if max(h, w) > max_side:
        import cv2

        r = max_side / max(h, w)
        size = (max(1, round(w * r)), max(1, round(h * r)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA).reshape(*size[::-1], 3)
    sh, sw = image.shape[:2]
    ph, pw = max(sh, math.ceil(sw / max_aspect)), max(sw, math.ceil(sh / max_aspect))
    out = np.empty((ph, pw, 3), np.uint8)
    out[:] = PAD_RGB
    out[:sh, :sw] = image
    return out, (sw / w, sh / h)


def check_batch(images: Sequence[np.ndarray], queries: Sequence[Sequence[str]]) -> None:
    if len(images) != len(queries):
        raise ConfigError(
            f"detect needs one query list per image, got {len(images)} images and "
            f"{len(queries)} query lists"
        )
    for i, im in enumerate(images):
        a = np.asarray(im)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or 0 in a.shape:
            raise ConfigError(f"image {i}: detect needs RGB uint8 HxWx3, got {a.dtype} {a.shape}")


def check_threshold(threshold: float, what: str = "threshold") -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"{what} must be in [0, 1], got {threshold!r}")
    return t


class Detector(ABC):
    """Finds what the queries name. `detect` takes a batch and returns one list per image."""

    name: str = "detector"
    model_id: str | None = None
    revision: str | None = None
    default_threshold: float = 0.3

    @abstractmethod
    def _detect(
        self,
        images: Sequence[np.ndarray],
        queries: Sequence[list[str]],
        threshold: float,
        max_detections: int | None,
    ) -> list[list[Detection]]: ...

    def detect(
        self,
        images: Sequence[np.ndarray],
        queries: Sequence[Sequence[str]],
        threshold: float | None = None,
        *,
        max_detections: int | None = DEFAULT_MAX_DETECTIONS,
    ) -> list[list[Detection]]:
        """Detections per image (best first) of the image's own queries, scores >= threshold
        (None: the provider's default). threshold=0 with max_detections=k gives the k best."""
        check_batch(images, queries)
        t = self.default_threshold if threshold is None else check_threshold(threshold)
        if max_detections is not None and max_detections < 1:
            raise ConfigError(f"max_detections must be >= 1 or None, got {max_detections}")
        qs = [parse_queries(list(q)) for q in queries]
        todo = [i for i, q in enumerate(qs) if q]
        out: list[list[Detection]] = [[] for _ in images]
        if todo:
            found = self._detect([images[i] for i in todo], [qs[i] for i in todo], t,
                                 max_detections)  # fmt: skip
            for i, dets in zip(todo, found, strict=True):
                out[i] = dets
        return out

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "model": self.model_id, "revision": self.revision}


class BoxesDetector(Detector):
    """Returns given detections: `default` for every image, `per_image` keyed by image_digest.
    Only those whose label is among the image's queries are returned. For tests that need known
    boxes, and for boxes a person has reviewed."""

    name = "boxes"
    default_threshold = 0.0

    def __init__(
        self,
        default: Iterable[Detection] = (),
        per_image: Mapping[str, Iterable[Detection]] | None = None,
    ):
        self.default = list(default)
        self.per_image = {k: list(v) for k, v in (per_image or {}).items()}

    def _detect(self, images, queries, threshold, max_detections):
        out = []
        for im, qs in zip(images, queries, strict=True):
            given = self.per_image.get(image_digest(im), self.default)
            size = (im.shape[1], im.shape[0])
            mine = [d for d in given if d.label in qs]
            out.append(finalize(mine, size, threshold, max_detections, nms_iou=None))
        return out


TEXT_QUERIES = ("text", "caption", "subtitles")


class RoutedDetector(Detector):
    """Sends each image's text queries (`text_queries`) to `text` and the others to
    `open_vocab`; a missing provider's queries go to the other one."""

    name = "routed"

    def __init__(
        self,
        open_vocab: Detector | None,
        text: Detector | None = None,
        text_queries: Iterable[str] = TEXT_QUERIES,
        text_threshold: float | None = None,
    ):
        if open_vocab is None and text is None:
            raise ConfigError("give an open-vocabulary detector, a text detector or both")
        self.open_vocab, self.text = open_vocab, text
        self.text_queries = set(parse_queries(list(text_queries), "text queries"))
        self.text_threshold = None if text_threshold is None else check_threshold(text_threshold)
        self.default_threshold = (open_vocab or text).default_threshold  # type: ignore[union-attr]

    def _split(self, qs: list[str]) -> tuple[list[str], list[str]]:
        if self.text is None:
            return qs, []
        if self.open_vocab is None:
            return [], qs
        return [q for q in qs if q not in self.text_queries], [
            q for q in qs if q in self.text_queries
        ]

    def _detect(self, images, queries, threshold, max_detections):
        split = [self._split(q) for q in queries]
        out: list[list[Detection]] = [[] for _ in images]
        # the text detector's own threshold; alone, it takes the one asked for
        text_t = self.text_threshold
        if text_t is None and self.open_vocab is None:
            text_t = threshold
        parts = ((self.open_vocab, 0, threshold), (self.text, 1, text_t))
        for provider, side, t in parts:
            if provider is None or not any(s[side] for s in split):
                continue
            found = provider.detect(images, [s[side] for s in split], t,
                                    max_detections=max_detections)  # fmt: skip
            for i, dets in enumerate(found):
                out[i].extend(dets)
        return [sorted(d, key=lambda d: (-d.score, d.label, d.box)) for d in out]

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "open_vocab": self.open_vocab.describe() if self.open_vocab else None,
            "text": self.text.describe() if self.text else None,
            "text_queries": sorted(self.text_queries),
        }
