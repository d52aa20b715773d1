"""The one interface every model backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ..params import GenerationParams


class Inpainter(ABC):
    """Inpaints a batch of same-sized RGB uint8 images.

    `masks` are HxW uint8 arrays, 255 where pixels must be regenerated, 0 elsewhere (already
    thresholded and dilated). `params` holds what the whole batch shares (steps, guidance, ...);
    `prompts`, `negative_prompts` and `seeds` are per image, so a row's result depends only on its own
    inputs and seed, never on what else is in the batch. Returns, per input image,
    `params.num_images_per_prompt` RGB uint8 arrays of the input's size, flattened in input order.
    Images and masks must be multiples of `size_multiple`; the geometry module takes care of that.
    """

    backend: str = "base"
    model_id: str = ""
    revision: str | None = None
    # Side length the model was trained at (512 for SD2-inpainting); None: any size is native.
    native_size: int | None = None
    size_multiple: int = 8

    @abstractmethod
    def inpaint(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        params: GenerationParams,
        prompts: Sequence[str],
        negative_prompts: Sequence[str | None],
        seeds: Sequence[int],
    ) -> list[np.ndarray]: ...

    def describe(self) -> dict:
        """What goes into result rows and job.json to say which model made an image."""
        return {"backend": self.backend, "model": self.model_id, "revision": self.revision}
