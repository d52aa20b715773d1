"""Overlaid text with PaddleOCR's text detectors as transformers ships them (any PP-OCRv5/v6
`*_det` checkpoint, e.g. PP-OCRv6 medium; Apache-2.0 code and weights), and the DB ends that the
shipped onnxruntime detector (detect/shipped.py, the default) shares. The model is a
DB (differentiable binarization) segmenter: it gives a text-probability map, and boxes come from
its connected regions. Both ends are done here with OpenCV, as PaddleOCR does, because
transformers' image processor for these models needs torchvision, which this package does not
install (docs/masks.md).

Each image is resized on its own (longest side <= limit_side_len, sides multiples of 32); images
of one input shape run as one forward pass, so a result never depends on the batch."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from batch_inpaint.detect.base import Detection, Detector, finalize
from batch_inpaint.detect.loading import PretrainedProvider
from batch_inpaint.errors import ModelError

# What an unset text detector means: the model the rapidocr wheel ships (detect/shipped.py)
DEFAULT_TEXT_DETECTOR = "rapidocr"
HUB_TEXT_DETECTOR = "PaddlePaddle/PP-OCRv6_medium_det_safetensors"  # PPOCRTextDetector's default
MODEL_TYPES = ("pp_ocrv5_mobile_det", "pp_ocrv5_server_det", "pp_ocrv6_small_det",
               "pp_ocrv6_medium_det")  # fmt: skip
# PaddleOCR's box_thresh, the mean probability inside a box: rapidocr's for the shipped detector,
# PaddleOCR's for the checkpoints
DEFAULT_THRESHOLD, CHECKPOINT_THRESHOLD = 0.5, 0.6
# PPOCRV5ServerDetImageProcessor's defaults; a checkpoint's preprocessor_config.json overrides them
PREPROCESS = {"limit_side_len": 960, "limit_type": "max", "max_side_limit": 4000,
              "image_mean": [0.406, 0.456, 0.485], "image_std": [0.225, 0.224, 0.229]}  # fmt: skip


class DBText(Detector):
    """PaddleOCR's DB text detection around any forward pass (`_maps`: a batch of normalised
    BGR tensors in, probability maps out): the resize and normalisation before, the boxes from
    the map after. PPOCRTextDetector runs the map through torch, OnnxTextDetector through
    onnxruntime. Every text query sent here gets the same boxes, labelled with that query."""

    pre: dict[str, Any]
    bin_threshold, unclip_ratio, min_size, dilate_map = 0.3, 1.5, 3, False
    reader: Any = None  # a TextReader when lines must be readable (read_with)
    # a region whose shorter side is more than this share of the image's shorter side is not a
    # line (None: no limit); see OnnxTextDetector
    max_line_share: float | None = None
    min_confidence = 0.0

    def _maps(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w) float32 text probabilities of a (n, 3, h, w) float32 batch."""
        raise NotImplementedError

    def working_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) the model sees: PaddleOCR's 'max' / 'min' / 'resize_long' rule."""
        limit, kind = self.pre["limit_side_len"], self.pre["limit_type"]
        if kind == "min":
            ratio = limit / min(h, w) if min(h, w) < limit else 1.0
        elif kind == "resize_long":
            ratio = limit / max(h, w)
        else:
            ratio = limit / max(h, w) if max(h, w) > limit else 1.0
        rh, rw = int(h * ratio), int(w * ratio)
        cap = self.pre["max_side_limit"]
        if cap and max(rh, rw) > cap:
            r = cap / max(rh, rw)
            rh, rw = int(rh * r), int(rw * r)
        return max(int(round(rh / 32) * 32), 32), max(int(round(rw / 32) * 32), 32)

    def _tensor(self, image: np.ndarray) -> np.ndarray:
        rh, rw = self.working_size(*image.shape[:2])
        x = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        x = (x - np.float32(self.pre["image_mean"])) / np.float32(self.pre["image_std"])
        return np.ascontiguousarray(x[:, :, ::-1].transpose(2, 0, 1))  # BGR, as PaddleOCR reads

    def _detect(self, images, queries, threshold, max_detections):
        tensors = [self._tensor(im) for im in images]
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(t.shape, []).append(i)
        out: list[list[Detection]] = [[] for _ in images]
        for idx in groups.values():
            maps = self._maps(np.stack([tensors[i] for i in idx]))
            for j, i in enumerate(idx):
                h, w = images[i].shape[:2]
                lines = self.regions(maps[j], (w, h), threshold)
                if self.reader is not None and lines:  # --text-min-confidence
                    read = self.reader.confidences(images[i], [q for _, _, q in lines])
                    lines = [x for x, c in zip(lines, read, strict=True)
                             if c >= self.min_confidence]  # fmt: skip
                found = [Detection(q, score, box) for box, score, _ in lines for q in queries[i]]
                out[i] = finalize(found, (w, h), threshold, max_detections, nms_iou=None)
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.reader is not None:
            d.update(min_confidence=self.min_confidence, reader=self.reader.model_id)
        return d

    def read_with(self, reader: Any, min_confidence: float) -> None:
        """Keep only lines `reader` (detect/shipped.TextReader) reads with at least this
        confidence: stripes and textures the detector takes for text are dropped."""
        self.reader, self.min_confidence = reader, float(min_confidence)

    def boxes_from_map(self, prob: np.ndarray, size: tuple[int, int], box_threshold: float):
        """DB post-processing: [(box in input pixels, score)] from a probability map."""
        return [(box, score) for box, score, _ in self.regions(prob, size, box_threshold)]

    def regions(self, prob: np.ndarray, size: tuple[int, int], box_threshold: float):
        """[(box, score, quad)]: boxes_from_map's, with each line's rotated rectangle (4x2
        float32 corners in input pixels), which the recogniser crops."""
        mh, mw = prob.shape
        sx, sy = size[0] / mw, size[1] / mh
        bitmap = (prob > self.bin_threshold).astype(np.uint8) * 255
        if self.dilate_map:  # PaddleOCR's use_dilation: joins a line's broken strokes
            bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        out = []
        for contour in contours[:1000]:
            rect = cv2.minAreaRect(contour)
            if min(rect[1]) < self.min_size:
                continue
            score = _box_score(prob, cv2.boxPoints(rect))
            if score < box_threshold:
                continue
            # DB's unclip: grow the shrunk text kernel by area * ratio / perimeter on each side
            (cx, cy), (rw, rh), angle = rect
            d = rw * rh * self.unclip_ratio / max(2 * (rw + rh), 1e-6)
            grown = ((cx, cy), (rw + 2 * d, rh + 2 * d), angle)
            if min(grown[1]) < self.min_size + 2:
                continue
            if self.max_line_share and min(grown[1]) > self.max_line_share * min(mh, mw):
                continue
            pts = cv2.boxPoints(grown)
            box = (pts[:, 0].min() * sx, pts[:, 1].min() * sy,
                   (pts[:, 0].max() + 1) * sx, (pts[:, 1].max() + 1) * sy)  # fmt: skip
            quad = (pts * np.float32([sx, sy])).astype(np.float32)
            out.append((tuple(float(v) for v in box), float(score), quad))
        return out


class PPOCRTextDetector(PretrainedProvider, DBText):
    """Text boxes from a PP-OCR detection checkpoint through transformers and torch."""

    name = "pp-ocr"
    default_threshold = CHECKPOINT_THRESHOLD
    default_model, model_types, what = HUB_TEXT_DETECTOR, MODEL_TYPES, "text detector"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        bin_threshold: float = 0.3,
        unclip_ratio: float = 1.5,
        min_size: int = 3,
        **source: Any,
    ):
        """`source`: revision, device, dtype, storage, cache_dir, local_files_only, as every
        model takes them (models.torch_device.SourcedModel)."""
        self.bin_threshold, self.unclip_ratio, self.min_size = bin_threshold, unclip_ratio, min_size
        super().__init__(model, **source)

    def load_source(self, source: str, kwargs: dict[str, Any]) -> None:
        from transformers import AutoModelForObjectDetection

        self.pre = {**PREPROCESS, **_preprocessor_overrides(source, kwargs)}
        self.model = self.pretrained(AutoModelForObjectDetection, source, kwargs)

    @classmethod
    def from_model(cls, model: Any, *, model_id: str = "in memory", device: str = "cpu",
                   dtype: Any = None, **pre: Any) -> PPOCRTextDetector:  # fmt: skip
        """A text detector around a model built in memory (benchmarks of random ones)."""
        self = cls.adopt(model, model_id=model_id, device=device, dtype=dtype)
        self.pre = {**PREPROCESS, **pre}
        self.bin_threshold, self.unclip_ratio, self.min_size = 0.3, 1.5, 3
        return self

    def _maps(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self.device, self.dtype)
        try:
            with self._lock, torch.inference_mode():
                return self.model(pixel_values=x).last_hidden_state[:, 0].float().cpu().numpy()
        except Exception as exc:
            from batch_inpaint.models.base import is_out_of_memory

            if is_out_of_memory(exc):
                raise
            raise ModelError(f"text detector failed: {type(exc).__name__}: {exc}") from exc


def _box_score(prob: np.ndarray, pts: np.ndarray) -> float:
    """Mean probability inside the quad (PaddleOCR's 'fast' score)."""
    h, w = prob.shape
    x0 = int(np.clip(np.floor(pts[:, 0].min()), 0, w - 1))
    x1 = int(np.clip(np.ceil(pts[:, 0].max()), 0, w - 1))
    y0 = int(np.clip(np.floor(pts[:, 1].min()), 0, h - 1))
    y1 = int(np.clip(np.ceil(pts[:, 1].max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    cv2.fillPoly(mask, [(pts - [x0, y0]).astype(np.int32)], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def _preprocessor_overrides(source: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing keys of the checkpoint's preprocessor_config.json, if it has one."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        config, _ = ImageProcessingMixin.get_image_processor_dict(source, **kwargs)
    except Exception:  # noqa: BLE001 - no preprocessor config: the class defaults apply
        return {}
    return {k: config[k] for k in PREPROCESS if k in config}
