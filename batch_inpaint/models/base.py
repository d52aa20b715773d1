"""The one interface every model backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from batch_inpaint.batches import isolate
from batch_inpaint.errors import ConfigError, InpaintError, ModelError
from batch_inpaint.models.spec import ModelSpec
from batch_inpaint.params import GenerationParams
from batch_inpaint.vocab import ErrorKind


class Inpainter(ABC):
    """Inpaints a batch of same-sized RGB uint8 images.

    `masks` are HxW uint8 arrays, 255 where pixels must be regenerated, 0 elsewhere (already
    thresholded and dilated). `params` holds what the whole batch shares (steps, guidance, ...);
    `prompts`, `negative_prompts` and `seeds` are per image, so a row's result depends only on its
    own inputs and seed, never on what else is in the batch. Returns, per input image,
    `params.num_images_per_prompt` RGB uint8 arrays of the input's size, flattened in input order.
    Images and masks must be multiples of `size_multiple`; the geometry module takes care of that.
    A subclass sets `backend`, `model_id`, `revision`, `native_size`, `size_multiple` and `ignores`
    so that `spec` equals `models.spec.model_spec` for the same backend and model.
    """

    backend: str = "base"
    model_id: str = ""
    revision: str | None = None
    # Side length the model was trained at (512 for SD2-inpainting); None: any size is native.
    native_size: int | None = None
    size_multiple: int = 8
    ignores: tuple[str, ...] = ()  # GenerationParams fields with no effect on this backend
    input_error: type[InpaintError] = ConfigError  # what check_batch raises

    @property
    def spec(self) -> ModelSpec:
        """The loaded model's spec: what in-process inpainting plans with, and what the job's
        model stage checks against the spec its images were planned with."""
        from batch_inpaint.storage.uri import redact_uri

        return ModelSpec(
            backend=self.backend,
            model=redact_uri(self.model_id),
            revision=self.revision,
            native_size=self.native_size,
            size_multiple=self.size_multiple,
            ignores=tuple(self.ignores),
            source="loaded",
        )

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

    def check_batch(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        prompts: Sequence[str],
        negative_prompts: Sequence[str | None],
        seeds: Sequence[int],
    ) -> tuple[int, int]:
        """The batch's (height, width), after checking what every backend needs: as many
        masks, prompts, negative prompts and seeds as images (at least one), every image RGB
        uint8 of one size, each mask HxW of that size, sides multiples of `size_multiple`.
        Raises `input_error` (ConfigError unless the backend says otherwise)."""
        lengths = (len(images), len(masks), len(prompts), len(negative_prompts), len(seeds))
        if len(set(lengths)) > 1:
            raise self.input_error(
                "batch lengths differ: {} images, {} masks, {} prompts, {} negative prompts, "
                "{} seeds; they must be equally long".format(*lengths)
            )
        if not lengths[0]:
            raise self.input_error("empty batch: pass at least one image")
        h, w = np.shape(images[0])[:2] if np.ndim(images[0]) >= 2 else (0, 0)
        for i, (im, m) in enumerate(zip(images, masks, strict=True)):
            if im.dtype != np.uint8 or im.shape != (h, w, 3):
                raise self.input_error(
                    f"image {i} is {im.dtype} {im.shape}: every image of a batch must be RGB "
                    f"uint8 HxWx3 of one size ({h}x{w}x3, as image 0)"
                )
            if np.shape(m) != (h, w):
                raise self.input_error(
                    f"mask {i} is {np.shape(m)}; it must be ({h}, {w}), its image's HxW"
                )
        if h % self.size_multiple or w % self.size_multiple:
            raise self.input_error(f"image size {w}x{h} must be a multiple of {self.size_multiple}")
        return h, w

    def describe(self) -> dict:
        """What goes into result rows and job.json to say which model made an image."""
        return {"backend": self.backend, "model": self.model_id, "revision": self.revision}

    def inpaint_isolated(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        params: GenerationParams,
        prompts: Sequence[str],
        negative_prompts: Sequence[str | None],
        seeds: Sequence[int],
    ) -> list[list[np.ndarray] | ModelError]:
        """`inpaint`, one entry per input image; a failure costs only the image that causes it.

        A failing batch (CUDA out of memory, or an error on one image) is split in halves and
        retried down to single images; an image that fails alone gets a ModelError instead of its
        results (kind `out_of_memory`, transient, when it ran out of memory even alone).
        Seeds are per image, so splitting does not change any result.
        """
        k = params.num_images_per_prompt

        def run(idx: list[int]) -> list[list[np.ndarray]]:
            flat = self.inpaint([images[i] for i in idx], [masks[i] for i in idx], params,
                                [prompts[i] for i in idx], [negative_prompts[i] for i in idx],
                                [seeds[i] for i in idx])  # fmt: skip
            return [flat[j * k : (j + 1) * k] for j in range(len(idx))]

        def alone(_: int, exc: Exception) -> ModelError:
            if is_out_of_memory(exc):  # the worker's memory, not the row: redone by default
                free_cuda_cache()
                return ModelError(f"model ran out of memory on this image alone: {exc}",
                                  kind=ErrorKind.OUT_OF_MEMORY.value)  # fmt: skip
            return ModelError(f"model failed on this image ({type(exc).__name__}): {exc}")

        return isolate(run, range(len(images)), alone, on_split=lambda _: free_cuda_cache())


def is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def free_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")  # only if a backend already imported it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
