"""Open-vocabulary detection with Grounding DINO (transformers' GroundingDinoForObjectDetection and
GroundingDinoProcessor; Apache-2.0 code and weights): text queries in, boxes with the query they
answer out. docs/masks.md says why this model and not OWLv2.

Each image is prepared on its own (no padding to a batch size; only a strip thinner than 1:8 is
padded, alone, see base.pad_to_aspect), then images with the same input shape and the same
queries run as one forward pass: a result never depends on the batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from batch_inpaint.detect.base import Detection, Detector, finalize, pad_to_aspect
from batch_inpaint.detect.loading import PretrainedProvider
from batch_inpaint.errors import ConfigError, ModelError

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
MODEL_TYPES = ("grounding-dino", "mm-grounding-dino")
DEFAULT_THRESHOLD = 0.3  # between the model card's box (0.35) and text (0.25) thresholds


class GroundingDinoDetector(PretrainedProvider, Detector):
    """Grounding DINO behind the Detector interface. `model`: a Hub id (default
    IDEA-Research/grounding-dino-tiny), a local folder or an s3:// prefix of one."""

    name = "grounding-dino"
    default_threshold = DEFAULT_THRESHOLD
    default_model, model_types, what = DEFAULT_DETECTOR, MODEL_TYPES, "detector"

    def load_source(self, source: str, kwargs: dict[str, Any]) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, GroundingDinoProcessor

        self.processor = self.pretrained_processor(GroundingDinoProcessor, source, kwargs)
        self.model = self.pretrained(AutoModelForZeroShotObjectDetection, source, kwargs)
        self._setup()

    @classmethod
    def from_model(cls, model: Any, processor: Any, *, model_id: str = "in memory",
                   device: str = "cpu", dtype: Any = None) -> GroundingDinoDetector:  # fmt: skip
        """A detector around a model built in memory (benchmarks of random full-size ones)."""
        self = cls.adopt(model, model_id=model_id, device=device, dtype=dtype)
        self.processor = processor
        self._setup()
        return self

    def _setup(self) -> None:
        tok = self.processor.tokenizer
        self._dot = tok.convert_tokens_to_ids(".")
        self._special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}

    def _prepare(self, image: np.ndarray, queries: list[str]) -> dict[str, Any]:
        # channels_last said, not guessed: a 1x1 or 1xN image would read as channels-first
        enc = self.processor(images=[image], text=[queries], return_tensors="pt",
                             input_data_format="channels_last")  # fmt: skip
        spans = self._spans(enc["input_ids"][0].tolist())
        if len(spans) < len(queries):
            raise ConfigError(
                f"{len(queries)} queries are more than the detector's text input holds "
                f"({self.model.config.max_text_len} tokens): ask for fewer or shorter queries"
            )
        return {"enc": enc, "spans": spans}

    def _spans(self, ids: list[int]) -> list[list[int]]:
        """Token positions of each query in '<cls> q0 . q1 . <sep>'."""
        spans, cur = [], []
        for pos, t in enumerate(ids):
            if t == self._dot:
                if cur:
                    spans.append(cur)
                cur = []
            elif t not in self._special:
                cur.append(pos)
        return spans

    def _detect(self, images, queries, threshold, max_detections):
        import torch

        padded = [pad_to_aspect(im) for im in images]  # thin strips: see pad_to_aspect
        prepared = [self._prepare(p[0], q) for p, q in zip(padded, queries, strict=True)]
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prepared):
            enc = p["enc"]
            key = (tuple(enc["pixel_values"].shape), tuple(enc["input_ids"][0].tolist()))
            groups.setdefault(key, []).append(i)
        out: list[list[Detection]] = [[] for _ in images]
        for idx in groups.values():
            batch = {
                k: torch.cat([prepared[i]["enc"][k] for i in idx]).to(self.device)
                for k in prepared[idx[0]]["enc"]
            }
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
            # the padded image's size in the original's pixels: boxes come out in those
            sizes = [(padded[i][0].shape[0] / padded[i][1][1],
                      padded[i][0].shape[1] / padded[i][1][0]) for i in idx]  # fmt: skip
            try:
                with self._lock, torch.inference_mode():
                    outputs = self.model(**batch)
                    boxes = self.processor.post_process_grounded_object_detection(
                        outputs, batch["input_ids"], threshold=-1.0, text_threshold=1.0,
                        target_sizes=sizes,
                    )  # fmt: skip
            except Exception as exc:
                from batch_inpaint.models.base import is_out_of_memory

                if is_out_of_memory(exc):
                    raise
                raise ModelError(f"detector failed: {type(exc).__name__}: {exc}") from exc
            probs = outputs.logits.float().sigmoid().cpu().numpy()
            for j, i in enumerate(idx):
                spans = prepared[i]["spans"]
                # per query: its best token's probability (Grounding DINO scores tokens)
                per_query = np.stack([probs[j][:, s].max(axis=1) for s in spans], axis=1)
                best = per_query.argmax(axis=1)
                scores = per_query[np.arange(len(best)), best]
                xyxy = boxes[j]["boxes"].float().cpu().numpy()
                found = [
                    Detection(queries[i][b], float(s), tuple(float(v) for v in box))
                    for b, s, box in zip(best, scores, xyxy, strict=True)
                ]
                h, w = images[i].shape[:2]
                out[i] = finalize(found, (w, h), threshold, max_detections)
        return out
