"""Boxes refined into pixel masks with SAM (transformers' SamModel and SamProcessor; Apache-2.0
code and weights). Boxes are often enough for text and logos; SAM helps for objects, where a box
would repaint much background around them.

The image encoder (the costly part) runs on the whole batch: every image is resized and padded
to the same square on its own, so that batch is shape-independent. The prompt decoder then
runs per image with that image's boxes."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError, ModelError

DEFAULT_SEGMENTER = "facebook/sam-vit-base"
MODEL_TYPES = ("sam",)


class SamSegmenter:
    """`segment(images, boxes)`: one bool HxW mask per box, per image."""

    name = "sam"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: Any = None,
        storage: Any = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
    ):
        from transformers import SamModel, SamProcessor

        from batch_inpaint.detect import loading

        self.model_id, self.revision = os.fspath(model or DEFAULT_SEGMENTER), revision
        self.device, self.dtype = loading.resolve(device, dtype)
        what = "segmenter"
        source, kw = loading.model_source(self.model_id, revision, storage=storage,
                                          cache_dir=cache_dir, local_files_only=local_files_only,
                                          what=what)  # fmt: skip
        loading.check_model_type(source, kw, MODEL_TYPES, model_id=self.model_id, what=what)
        self.processor = loading.load_processor(SamProcessor, source, kw,
                                                model_id=self.model_id, what=what)  # fmt: skip
        self.model = loading.load_pretrained(SamModel, source, kw, device=self.device,
                                             dtype=self.dtype, model_id=self.model_id,
                                             revision=revision, what=what)  # fmt: skip
        self._lock = threading.Lock()

    @classmethod
    def from_model(cls, model: Any, processor: Any, *, model_id: str = "in memory",
                   device: str = "cpu", dtype: Any = None) -> SamSegmenter:  # fmt: skip
        """A segmenter around a model built in memory (benchmarks of random full-size ones)."""
        from batch_inpaint.detect import loading

        self = cls.__new__(cls)
        self.model_id, self.revision = model_id, None
        self.device, self.dtype = loading.resolve(device, dtype)
        self.processor, self.model = processor, model.to(self.device, self.dtype).eval()
        self._lock = threading.Lock()
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
