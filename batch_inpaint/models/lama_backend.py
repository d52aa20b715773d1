"""The `lama` backend: a LaMa-class fill (big-lama) through spandrel, one forward pass per batch.

No prompt, no steps, no seed: the fill depends on the pixels and the mask only, so every
diffusion parameter is ignored (the spec's `ignores` says so) and the k results of a row are
copies. Weights: see lama_weights (safetensors by default, nothing that runs code).

Sizes: LaMa is fully convolutional with a global (FFT) receptive field, trained on 256x256 crops
and known to hold up to about 2k; no side is native, so native_size is None: full mode works at
the image's own size (up to max_side, never upscaled), crop mode cuts 512x512 windows
(geometry.DEFAULT_CROP_SIZE) where the image is that big, so batches keep one shape. Working
sizes are multiples of 8 (three stride-2 downsamplings); sides under 16 are padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models.base import Inpainter, is_out_of_memory
from batch_inpaint.models.spec import (
    FILL_IGNORES,
    LAMA_NATIVE_SIZE,
    LAMA_SIZE_MULTIPLE,
    lama_model_spec,
)
from batch_inpaint.models.torch_device import SourcedModel, resolve_dtype
from batch_inpaint.params import GenerationParams

MIN_SIDE = 16  # the residual blocks' reflect padding needs a 2x2 bottleneck
# 'auto' on a CUDA device with native bf16 (Ampere and later); others run fp32. `python -m bench
# l2` measures bf16 against fp32 (speed, largest pixel difference): set this to "fp32" to revert.
CUDA_DEFAULT_DTYPE = "bf16"
FP16_REFUSED = (
    "dtype fp16 is refused for backend lama: LaMa's FFT layers overflow and lose precision in "
    "fp16 (spandrel's LaMa declares supports_half=False); use bf16 (the default on GPUs that "
    "support it) or fp32"
)
# On the CPU a batch runs in chunks of at most this many pixels: batching gains nothing there
# and a 1024² image already needs about 1.5 GB of activations.
CPU_PIXELS_PER_PASS = 2 * 1024 * 1024


def lama_dtype_name(dtype: Any, device: str, bf16_supported: bool) -> str:
    """The rule, without torch: None/'auto' is CUDA_DEFAULT_DTYPE on a CUDA device with native
    bf16, else fp32; an explicit fp16 is a ConfigError (FP16_REFUSED); anything else is
    returned as given, for resolve_dtype to check."""
    name = str(dtype).strip().lower().removeprefix("torch.") if dtype is not None else "auto"
    if name == "auto":
        cuda = str(device).startswith("cuda")
        return CUDA_DEFAULT_DTYPE if cuda and bf16_supported else "fp32"
    if name in ("fp16", "float16", "half"):
        raise ConfigError(FP16_REFUSED)
    return name


def bf16_supported(device: str) -> bool:
    """Whether `device` (cuda or cuda:N) computes bf16 natively; False for the CPU."""
    if not str(device).startswith("cuda"):
        return False
    import torch

    index = int(device[5:]) if device.startswith("cuda:") else torch.cuda.current_device()
    with torch.cuda.device(index):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_lama_dtype(dtype: Any, device: str):
    """The torch dtype lama runs in on `device` (lama_dtype_name's rule); bf16 only on CUDA,
    where it runs under autocast (weights stay fp32; torch keeps the FFTs in fp32)."""
    return resolve_dtype(lama_dtype_name(dtype, device, bf16_supported(device)), device)


class LamaInpainter(SourcedModel, Inpainter):
    """LaMa weights loaded through spandrel behind the Inpainter interface."""

    backend = "lama"
    native_size = LAMA_NATIVE_SIZE
    size_multiple = LAMA_SIZE_MULTIPLE
    ignores = FILL_IGNORES

    def check_source(self, model, revision) -> None:
        lama_model_spec(model, revision)  # a missing model or a refused file type: before any I/O

    def pick_dtype(self, dtype, device):
        return resolve_lama_dtype(dtype, device)

    def load(self, *, storage, cache_dir, local_files_only) -> None:
        from batch_inpaint.models.lama_weights import load_lama, resolve_weights

        self.weights = resolve_weights(
            self.model_id, self.revision, storage, cache_dir, local_files_only
        )
        try:
            self.descriptor = load_lama(self.weights, self.device)
        except Exception as exc:
            if is_out_of_memory(exc) or isinstance(exc, (ConfigError, ModelError)):
                raise
            raise ModelError(
                f"could not load lama weights {self.weights}: {type(exc).__name__}: {exc}"
            ) from exc
        self.model = self.descriptor.model

    def inpaint(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        params: GenerationParams,
        prompts: Sequence[str],
        negative_prompts: Sequence[str | None],
        seeds: Sequence[int],
    ) -> list[np.ndarray]:
        import torch

        # 1. Check inputs
        h, w = self.check_batch(images, masks, prompts, negative_prompts, seeds)
        n = len(images)

        # 2. Tensors: RGB in [0, 1], masks in {0, 1} (255 = fill)
        img = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        msk = np.stack([np.asarray(m).reshape(h, w) > 127 for m in masks])
        msk = torch.from_numpy(msk).unsqueeze(1).float()
        ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
        if ph or pw:
            img = torch.nn.functional.pad(img, (0, pw, 0, ph), mode="replicate")
            msk = torch.nn.functional.pad(msk, (0, pw, 0, ph))

        # 3. Forward passes (one on CUDA; pixel-bounded chunks on the CPU)
        step = n if self.on_gpu else max(1, CPU_PIXELS_PER_PASS // (h * w))
        parts = []
        with self._lock:
            try:
                for s in range(0, n, step):
                    parts.append(self._forward(img[s : s + step], msk[s : s + step]))
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise  # unwrapped, so inpaint_isolated sees an OOM and splits the batch
                raise ModelError(f"LaMa forward failed: {type(exc).__name__}: {exc}") from exc
        out = torch.cat(parts)[:, :, :h, :w]
        if not torch.isfinite(out).all():
            raise ModelError(
                f"LaMa produced non-finite values in {self.dtype}; run it with dtype fp32"
            )
        arr = out.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        k = int(params.num_images_per_prompt)
        # One deterministic fill per image: its k results are copies.
        return [arr[i].copy() for i in range(n) for _ in range(k)]

    @property
    def on_gpu(self) -> bool:
        return str(self.device).startswith("cuda")

    def _forward(self, img, msk):
        import torch

        img, msk = img.to(self.device), msk.to(self.device)
        with torch.inference_mode():
            if self.dtype != torch.float32:
                with torch.autocast("cuda", dtype=self.dtype):
                    return self.model(img, msk).float().cpu()
            return self.model(img, msk).cpu()
