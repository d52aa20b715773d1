"""The default backend: a diffusers inpainting pipeline (SD1.5, SD2 or SDXL inpainting checkpoints).

SDXL's VAE overflows in fp16 (NaNs: black or noise fills). In fp16 it runs upcast to fp32 for
encode and decode (its config's `force_upcast`, which the SDXL pipelines honour), unless `vae`
names an fp16-safe VAE (e.g. madebyollin/sdxl-vae-fp16-fix), which then runs as its own config
says. In fp32 or bf16 (fp32's range) nothing is upcast."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models.availability import model_problem, ways_out
from batch_inpaint.models.base import Inpainter, is_out_of_memory
from batch_inpaint.models.spec import DEFAULT_MODEL, sizes_from_configs
from batch_inpaint.models.torch_device import resolve_device, resolve_dtype
from batch_inpaint.params import SCHEDULERS, GenerationParams

ATTENTIONS = ("slicing", "sdpa", "auto")


def resolve_attention(attention: str | None, device: str) -> str:
    """'auto' -> 'sdpa': torch's fused attention is faster than slicing and, on CUDA, no larger
    (its memory-efficient kernels never build the full attention matrix); 'slicing' is the card's
    choice, kept as the default for the smallest GPUs."""
    attention = (attention or "slicing").strip().lower()
    if attention not in ATTENTIONS:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    return "sdpa" if attention == "auto" else attention


def _dtype_keyword() -> str:
    """diffusers renamed from_pretrained's torch_dtype to dtype (0.40-ish); older ones need the old."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def vae_upcast(sdxl: bool, fp16: bool, vae_given: bool, vae_says: bool) -> bool:
    """Whether the VAE encodes and decodes in fp32: only SDXL's, only in fp16 (in fp32 or bf16
    nothing overflows), and there as a `vae` option's own config says (`vae_says`, its
    force_upcast: False for an fp16-safe VAE), else always (the checkpoint's VAE overflows)."""
    if not (sdxl and fp16):
        return False
    return vae_says if vae_given else True


def output_seed(seed: int, j: int) -> int:
    """The seed of a row's j-th output: the row's own seed for the first, a spread-out one after."""
    return int(seed) if j == 0 else (int(seed) + j * 0x9E3779B97F4A7C15) % 2**63


class DiffusersInpainter(Inpainter):
    """A diffusers inpainting pipeline behind the Inpainter interface.

    `model` is a Hub id, a local diffusers directory, or a URI (s3://...) of such a directory,
    fetched through `batch_inpaint.storage.model_cache.fetch_model_dir`. Only safetensors weights are loaded
    and no remote code runs. Pass a commit hash as `revision` to pin Hub weights.
    """

    backend = "diffusers"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: Any = None,
        attention: str = "slicing",
        vae_tiling: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        storage: Any = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        variant: str | None = None,
        vae: str | os.PathLike | None = None,
    ):
        import torch

        self.model_id = str(model or DEFAULT_MODEL)
        self.revision = revision
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.attention = resolve_attention(attention, self.device)
        self._lock = threading.Lock()
        self.vae_id = os.fspath(vae) if vae else None
        self.pipe = self._load(storage, cache_dir, local_files_only, variant)
        self.pipe.set_progress_bar_config(disable=True)
        self.vae_upcast = self._vae_upcast()
        # The loaded configs, by the same rule models.spec.model_spec reads them with.
        self.native_size, self.size_multiple = sizes_from_configs(
            self.pipe.unet.config, self.pipe.vae.config
        )
        if self.attention == "slicing":
            self.pipe.enable_attention_slicing()
        if vae_tiling:
            self.pipe.vae.enable_tiling()
        if channels_last:
            self.pipe.unet.to(memory_format=torch.channels_last)
        if compile:
            self.pipe.unet = torch.compile(self.pipe.unet)
        self._schedulers: dict[str, Any] = {"default": self.pipe.scheduler}

    def _load(self, storage, cache_dir, local_files_only: bool, variant: str | None):
        from diffusers import AutoPipelineForInpainting

        source, local = _where(self.model_id, "model", storage, cache_dir, local_files_only)
        kwargs: dict[str, Any] = {
            _dtype_keyword(): self.dtype,
            "use_safetensors": True,
            "local_files_only": local,
        }
        if not local:
            kwargs["revision"] = self.revision  # None: the Hub's main branch
        if cache_dir:
            kwargs["cache_dir"] = str(cache_dir)
        if variant:
            kwargs["variant"] = variant
        if not local:  # offline and not cached: say so now, not after minutes of Hub retries
            why = model_problem("diffusers", source, self.revision, cache_dir)
            if why:
                raise ModelError(why)
        if self.vae_id:
            kwargs["vae"] = self._load_vae(storage, cache_dir, local_files_only)
        try:
            pipe = AutoPipelineForInpainting.from_pretrained(source, **kwargs)
            return pipe.to(self.device)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            rev = f" at revision {self.revision}" if self.revision else ""
            first = (str(exc).strip().splitlines() or [""])[0][:300]  # one line, not a page
            raise ModelError(
                f"could not load model {self.model_id!r}{rev}: {type(exc).__name__}: {first}; "
                f"{ways_out(self.model_id)}"
            ) from exc

    def _load_vae(self, storage, cache_dir, local_files_only: bool):
        """The `vae` option's AutoencoderKL: a VAE folder (or a checkpoint folder with vae/), an
        s3:// URI of one, or a Hub id (the Hub cache first); safetensors only, in our dtype."""
        from diffusers import AutoencoderKL

        source, local = _where(self.vae_id, "vae", storage, cache_dir, local_files_only)
        kwargs: dict[str, Any] = {_dtype_keyword(): self.dtype, "use_safetensors": True}
        if local and os.path.isfile(os.path.join(source, "vae", "config.json")):
            kwargs["subfolder"] = "vae"
        if cache_dir:
            kwargs["cache_dir"] = str(cache_dir)
        try:
            try:
                return AutoencoderKL.from_pretrained(source, local_files_only=True, **kwargs)
            except Exception:
                from batch_inpaint.models.availability import hub_reachable

                if local or hub_reachable() is not None:
                    raise
                return AutoencoderKL.from_pretrained(source, **kwargs)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ModelError(
                f"could not load vae {self.vae_id!r}: {type(exc).__name__}: {first}; pass a VAE "
                "folder (config.json and safetensors weights), an s3:// URI of one or a Hub id"
            ) from exc

    def _vae_upcast(self) -> bool:
        """vae_upcast's answer for this pipeline; an SDXL VAE's force_upcast is set to match."""
        import torch

        sdxl = getattr(self.pipe, "text_encoder_2", None) is not None
        upcast = vae_upcast(sdxl, self.dtype == torch.float16, self.vae_id is not None,
                            bool(self.pipe.vae.config.get("force_upcast", True)))  # fmt: skip
        if sdxl:
            self.pipe.vae.register_to_config(force_upcast=upcast)
        return upcast

    def scheduler(self, name: str):
        """The pipeline's scheduler for `name`, built once from the checkpoint's config."""
        if name not in self._schedulers:
            import diffusers

            classes = {
                "dpm++": diffusers.DPMSolverMultistepScheduler,
                "ddim": diffusers.DDIMScheduler,
                "euler_a": diffusers.EulerAncestralDiscreteScheduler,
            }
            if name not in classes:
                raise ConfigError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")
            self._schedulers[name] = classes[name].from_config(self._schedulers["default"].config)
        return self._schedulers[name]

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

        # 2. One pipeline row per output: images, masks and prompts repeated k times each, so the
        # j-th output of a row sees only its own image, prompt and generator.
        k = int(params.num_images_per_prompt)
        img = np.repeat(np.stack(images).astype(np.float32) / 255.0, k, axis=0)
        msk = np.stack([m.reshape(h, w) for m in masks]).astype(np.float32)
        msk = np.repeat((msk > 127).astype(np.float32)[..., None], k, axis=0)
        gens = [
            torch.Generator("cpu").manual_seed(output_seed(s, j)) for s in seeds for j in range(k)
        ]

        # 3. One forward pass
        with self._lock:
            self.pipe.scheduler = self.scheduler(params.scheduler)
            try:
                with torch.inference_mode():
                    out = self.pipe(
                        prompt=[p for p in prompts for _ in range(k)],
                        negative_prompt=[(q or "") for q in negative_prompts for _ in range(k)],
                        image=img,
                        mask_image=msk,
                        height=h,
                        width=w,
                        strength=float(params.strength),
                        num_inference_steps=int(params.num_inference_steps),
                        guidance_scale=float(params.guidance_scale),
                        eta=float(params.eta),
                        num_images_per_prompt=1,
                        generator=gens,
                        output_type="np",
                    )
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise  # unwrapped, so inpaint_isolated sees an OOM and splits the batch
                raise ModelError(f"diffusers pipeline failed: {type(exc).__name__}: {exc}") from exc
        arr = np.asarray(out.images)
        return [(a * 255.0).round().clip(0, 255).astype(np.uint8) for a in arr]


def _where(source: str, what: str, storage, cache_dir, local_files_only: bool) -> tuple[str, bool]:
    """(folder or Hub id, whether it is local) for a model or VAE source: an s3:// (or other
    remote) folder is fetched into the cache first; a path that isn't a folder is refused."""
    if "://" in source:
        from batch_inpaint.storage.model_cache import fetch_model_dir

        return str(fetch_model_dir(source, storage, cache_dir)), True
    if os.path.isdir(source):
        return source, True
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise ConfigError(f"{what} {source!r}: no such directory (and not a Hub id org/name)")
    return source, local_files_only
