"""A drop-in for the ModelScope model card "Stable Diffusion v2 for Image Inpainting".

    from batch_inpaint.compat import pipeline, Tasks, OutputKeys

    inpainting = pipeline(Tasks.image_inpainting, model=..., device="gpu",
                          torch_dtype=torch.float16, enable_attention_slicing=True)
    out = inpainting({"image": "photo.png", "mask": "mask.png", "prompt": "background"})
    cv2.imwrite("result.png", out[OutputKeys.OUTPUT_IMG])  # BGR uint8, the input's size

Differences from the card, on purpose: the output has the input's own size (the card floors it to
a multiple of 64), and every pixel outside the mask is the input's, bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError
from batch_inpaint.image.inpaint import inpaint_array
from batch_inpaint.models import load_inpainter
from batch_inpaint.models.base import Inpainter
from batch_inpaint.option import build, yaml_key
from batch_inpaint.params import GenerationParams, GeometryOptions, InpaintOptions, MaskOptions

__all__ = ["ImageInpaintingPipeline", "OutputKeys", "Tasks", "pipeline"]


class Tasks:
    image_inpainting = "image-inpainting"


class OutputKeys:
    OUTPUT_IMG = "output_img"
    OUTPUT_IMGS = "output_imgs"


# The card's ModelScope ids hold the SD2-inpainting weights; on the Hugging Face Hub they live at
# the community mirror (stabilityai/stable-diffusion-2-inpainting was removed).
MODEL_ALIASES = {
    "damo/cv_stable-diffusion-v2_image-inpainting_base": "sd2-community/stable-diffusion-2-inpainting",
    "iic/cv_stable-diffusion-v2_image-inpainting_base": "sd2-community/stable-diffusion-2-inpainting",
    "stabilityai/stable-diffusion-2-inpainting": "sd2-community/stable-diffusion-2-inpainting",
}

# Input-dict keys (also accepted as call keywords; the dict wins), from the options' fields:
# generation by field name (the card's and diffusers' keywords: num_inference_steps, ...), mask and
# geometry by their job keys (mask_threshold, invert_mask, dilate, ..., mode, max_side, margin).
GENERATION_KEYS = tuple(f.name for f in fields(GenerationParams))
MASK_KEYS = tuple(yaml_key(f) for f in fields(MaskOptions))
GEOMETRY_KEYS = tuple(yaml_key(f) for f in fields(GeometryOptions))


def pipeline(
    task: str = Tasks.image_inpainting,
    model: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    torch_dtype: Any = None,
    enable_attention_slicing: bool = True,
    backend: str = "diffusers",
    revision: str | None = None,
    model_revision: str | None = None,
    storage: Any = None,
    **load_options: Any,
) -> ImageInpaintingPipeline:
    """The card's `pipeline(Tasks.image_inpainting, ...)`.

    device: 'gpu' (the card's default; same as 'cuda'), 'cpu' or 'auto' (ours: GPU when there
    is one). torch_dtype: None picks fp16 on GPU (the card's default) and fp32 on CPU; fp16 on
    CPU is refused, as the card says. `model_revision` is ModelScope's name for `revision`.
    Other keywords (vae_tiling, cache_dir, ...) go to `models.load_inpainter`.
    """
    if str(task).replace("_", "-") != Tasks.image_inpainting:
        raise ConfigError(f"task must be {Tasks.image_inpainting!r}, got {task!r}")
    if model is not None:
        model = MODEL_ALIASES.get(str(model), model)
        if backend == "diffusers" and _is_weights_file(model):  # a LaMa .safetensors/.pth/.ckpt
            backend = "lama"
    inpainter = load_inpainter(
        backend,
        model,
        revision=revision or model_revision,
        device=device,
        dtype=torch_dtype,
        attention="slicing" if enable_attention_slicing else "sdpa",
        storage=storage,
        **load_options,
    )
    return ImageInpaintingPipeline(inpainter, storage=storage)


def _is_weights_file(model: Any) -> bool:
    from batch_inpaint.models.lama_weights import WEIGHT_SUFFIXES, suffix_of

    return suffix_of(os.fspath(model)) in WEIGHT_SUFFIXES


class ImageInpaintingPipeline:
    """Callable with the card's input dict; returns {OutputKeys.OUTPUT_IMG: BGR uint8 array}."""

    def __init__(self, inpainter: Inpainter, storage: Any = None):
        self.inpainter = inpainter
        self.storage = storage

    def __call__(self, input: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # 1. Check inputs
        if not isinstance(input, dict):
            raise ConfigError(f"input must be a dict with 'image' and 'mask', got {type(input)}")
        values = {**kwargs, **input}  # the dict's values win over call keywords, as on the card
        for key in ("image", "mask"):
            if values.get(key) is None:
                raise ConfigError(f"input is missing {key!r} (a path, URI, PIL image or array)")
        known = {"image", "mask", *GENERATION_KEYS, *MASK_KEYS, *GEOMETRY_KEYS}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown input key(s) {unknown}; known: {sorted(known)}")
        options = self.options(values)

        # 2. Load, inpaint, hand back BGR like cv2
        image = self.load_image(values["image"])
        mask = self.load_mask(values["mask"], image, options.mask)
        result = inpaint_array(image, mask, self.inpainter, options)
        k = options.generation.num_images_per_prompt
        images = result.images if len(result.images) == k else [result.image] * k
        bgr = [np.ascontiguousarray(im[:, :, ::-1]) for im in images]
        out: dict[str, Any] = {OutputKeys.OUTPUT_IMG: bgr[0]}
        if k > 1:
            out[OutputKeys.OUTPUT_IMGS] = bgr
        return out

    @staticmethod
    def options(values: dict[str, Any]) -> InpaintOptions:
        def given(keys: tuple[str, ...]) -> dict[str, Any]:
            return {k: values[k] for k in keys if values.get(k) is not None}

        generation = given(GENERATION_KEYS)
        if "negative_prompt" in values:
            generation["negative_prompt"] = values["negative_prompt"]
        # A mask of another size is resized to its image, as the card's pipeline does.
        mask = {"mask_resize": True, **given(MASK_KEYS)}
        return InpaintOptions(
            generation=build(GenerationParams, generation, name=lambda f: f.name),
            mask=build(MaskOptions, mask),
            geometry=build(GeometryOptions, given(GEOMETRY_KEYS)),
        )

    def _bytes_if_remote(self, src: Any) -> Any:
        from batch_inpaint.storage.uri import is_local

        if isinstance(src, str) and not is_local(src):
            from batch_inpaint.storage.store import Storage

            storage = self.storage if isinstance(self.storage, Storage) else Storage(self.storage)
            return storage.read_bytes(src)
        return src

    def load_image(self, src: Any) -> np.ndarray:
        from batch_inpaint.image.codec import load_array

        return load_array(self._bytes_if_remote(src))

    def load_mask(self, src: Any, image: np.ndarray, options: MaskOptions) -> np.ndarray:
        from PIL import Image

        from batch_inpaint.image.masks import mask_from_image
        from batch_inpaint.storage.uri import local_path

        src = self._bytes_if_remote(src)
        if isinstance(src, (str, os.PathLike)):
            path = local_path(os.fspath(src))
            try:
                with open(path, "rb") as f:
                    src = f.read()
            except OSError as exc:
                from batch_inpaint.errors import NotFoundError

                raise NotFoundError(f"cannot read mask {path}: {exc.strerror}") from None
        if not isinstance(src, (bytes, bytearray, memoryview, np.ndarray, Image.Image)):
            raise ConfigError(f"mask must be a path, URI, PIL image or array, got {type(src)}")
        h, w = image.shape[:2]
        return mask_from_image(src, (w, h), options)
