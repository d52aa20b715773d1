"""Where a weights-backed model runs, and the constructor such models share.

`resolve_device` and `resolve_dtype` are the one rule for the `device` and `dtype` options of
every torch model here (inpainting backends and mask providers alike). `SourcedModel` is the
constructor they share: model id or source, revision, device, dtype, a lock, then the subclass's
`load` (which fetches a Hub id, local path or s3:// URI its own way)."""

from __future__ import annotations

import os
import threading
from typing import Any

from batch_inpaint.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}  # fmt: skip


def resolve_device(device: str | None) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'gpu' is an alias of 'cuda'."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "gpu" or device.startswith("gpu:"):
        device = "cuda" + device[3:]
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in DEVICES or (
        device.startswith("cuda:") and not device[5:].isdigit()
    ):
        raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} asked for, but CUDA is not available; use cpu or auto"
        )
    return device


def resolve_dtype(dtype: Any, device: str):
    """None or 'auto' -> fp16 on CUDA, fp32 on CPU. Half precision on CPU is refused: the card
    supports only fp32 there (and the job's config refuses it too)."""
    import torch

    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = DTYPES.get(str(dtype).strip().lower().removeprefix("torch."), "")
    if name not in ("float16", "bfloat16", "float32"):
        raise ConfigError(f"dtype must be one of auto, fp16, bf16, fp32, got {dtype!r}")
    if name != "float32" and device == "cpu":
        short = "fp16" if name == "float16" else "bf16"
        raise ConfigError(
            f"dtype {short} is not supported on CPU (the model card says so): use fp32"
        )
    return getattr(torch, name)


def resolve(device: str | None, dtype: Any) -> tuple[str, Any]:
    """(device, torch dtype) by the two rules above."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


class SourcedModel:
    """A model built from a source (Hub id, local path or s3:// URI; `revision` pins Hub
    weights) on a torch device. A subclass sets `default_model` (None: a model must be given)
    and implements `load`; it may refuse a source before any I/O (`check_source`) and pick its
    dtype by its own rule (`pick_dtype`)."""

    default_model: str | None = None

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
        self.check_source(model, revision)
        self.model_id, self.revision = os.fspath(model or self.default_model), revision
        self.device = resolve_device(device)
        self.dtype = self.pick_dtype(dtype, self.device)
        self._lock = threading.Lock()
        self.load(storage=storage, cache_dir=cache_dir, local_files_only=local_files_only)

    def check_source(self, model: str | os.PathLike | None, revision: str | None) -> None:
        """ConfigError for a source that cannot be right, before anything is fetched."""

    def pick_dtype(self, dtype: Any, device: str):
        return resolve_dtype(dtype, device)

    def load(self, *, storage: Any, cache_dir: str | os.PathLike | None,
             local_files_only: bool) -> None:  # fmt: skip
        raise NotImplementedError
