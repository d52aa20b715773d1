"""Boxes refined into pixel masks with SAM (transformers' SamModel and SamProcessor; Apache-2.0
code and weights). Boxes are often enough for text and logos; SAM helps for objects, where a box
would repaint much background around them.

The image encoder (the costly part) runs on the whole batch: every image is resized and padded
to the same square on its own, so that batch is shape-independent. The prompt decoder then
runs per image with that image's boxes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from batch_inpaint.detect.loading import PretrainedProvider
from batch_inpaint.errors import ConfigError, ModelError

DEFAULT_SEGMENTER = "facebook/sam-vit-base"
MODEL_TYPES = ("sam",)


class SamSegmenter(PretrainedProvider):
    """`segment(images, boxes)`: one bool HxW mask per box, per image."""

    name = "sam"
    default_model, model_types, what = DEFAULT_SEGMENTER, MODEL_TYPES, "segmenter"

    def load_source(self, source: str, kwargs: dict[str, Any]) -> None:
        from transformers import SamModel, SamProcessor

        self.processor = self.pretrained_processor(SamProcessor, source, kwargs)
        self.model = self.pretrained(SamModel, source, kwargs)

    @classmethod
    def from_model(cls, model: Any, processor: Any, *, model_id: str = "in memory",
                   device: str = "cpu", dtype: Any = None) -> SamSegmenter:  # fmt: skip
        """A segmenter around a model built in memory (benchmarks of random full-size ones)."""
        self = cls.adopt(model, model_id=model_id, device=device, dtype=dtype)
        self.processor = processor
        return self

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "model": self.model_id, "revision": self.revision}

    def segment(
        self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[Sequence[float]]]
    ) -> list[list[np.ndarray]]:
        """For each image, a bool mask (the image's size) per box [x0, y0, x1, y1] in pixels."""
        import torch

        if len(images) != len(boxes):
            raise ConfigError(f"segment needs one box list per image, got {len(images)} images "
                              f"and {len(boxes)} box lists")  # fmt: skip
        out: list[list[np.ndarray]] = [[] for _ in images]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        if not todo:
            return out
        encs = [
            self.processor(images=[images[i]], input_boxes=[[[float(v) for v in b] for b in
                                                              boxes[i]]], return_tensors="pt")
            for i in todo
        ]  # fmt: skip
        try:
            with self._lock, torch.inference_mode():
                pixels = torch.cat([e["pixel_values"] for e in encs]).to(self.device, self.dtype)
                embeddings = self.model.get_image_embeddings(pixels)
                for j, (i, enc) in enumerate(zip(todo, encs, strict=True)):
                    res = self.model(
                        image_embeddings=embeddings[j : j + 1],
                        input_boxes=enc["input_boxes"].to(self.device, self.dtype),
                        multimask_output=False,
                    )
                    masks = self.processor.post_process_masks(
                        res.pred_masks.float().cpu(), enc["original_sizes"],
                        enc["reshaped_input_sizes"],
                    )[0]  # fmt: skip
                    out[i] = [m[0].numpy().astype(bool) for m in masks]
        except Exception as exc:
            from batch_inpaint.models.base import is_out_of_memory

            if is_out_of_memory(exc) or isinstance(exc, ConfigError):
                raise
            raise ModelError(f"segmenter failed: {type(exc).__name__}: {exc}") from exc
        return out
