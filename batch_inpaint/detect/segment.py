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

from batch_inpaint.detect.base import pad_to_aspect
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
        # thin strips padded (base.pad_to_aspect; masks cropped back), channels_last said
        padded = {i: pad_to_aspect(images[i]) for i in todo}
        encs = [
            self.processor(images=[padded[i][0]], input_boxes=[_scaled(boxes[i], padded[i][1])],
                           return_tensors="pt", input_data_format="channels_last")
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
                    out[i] = [_unpadded(m[0].numpy(), images[i].shape[:2], padded[i][1])
                              for m in masks]  # fmt: skip
        except Exception as exc:
            from batch_inpaint.models.base import is_out_of_memory

            if is_out_of_memory(exc) or isinstance(exc, ConfigError):
                raise
            raise ModelError(f"segmenter failed: {type(exc).__name__}: {exc}") from exc
        return out


def _scaled(boxes: Sequence[Sequence[float]], scale: tuple[float, float]) -> list[list[float]]:
    sx, sy = scale
    return [[float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy]
            for b in boxes]  # fmt: skip


def _unpadded(mask: np.ndarray, size: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """A mask of pad_to_aspect's image back in the original's (h, w) pixels, as bool."""
    h, w = size
    if scale == (1.0, 1.0):
        return mask[:h, :w].astype(bool)
    import cv2

    part = mask[: max(1, round(h * scale[1])), : max(1, round(w * scale[0]))].astype(np.uint8)
    return cv2.resize(part, (w, h), interpolation=cv2.INTER_NEAREST).reshape(h, w).astype(bool)
