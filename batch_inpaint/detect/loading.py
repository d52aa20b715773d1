"""Where a detection model's files come from, by the inpainting models' rules: a Hub id (pinned
with `revision`), a local folder, or an object-storage prefix (s3://...) copied once into the
model cache (storage.model_cache.fetch_model_dir, under the URI policy). Safetensors only: a
folder holding only pickled weights is refused before anything is read, and from_pretrained is
always called with use_safetensors=True. No remote code runs."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models.torch_device import SourcedModel, resolve

PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def model_source(
    model: str | os.PathLike,
    revision: str | None = None,
    *,
    storage: Any = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    what: str = "model",
) -> tuple[str, dict[str, Any]]:
    """(what to pass to from_pretrained, its keyword arguments) for a Hub id, folder or URI."""
    source, local = os.fspath(model), local_files_only
    if "://" in source:
        from batch_inpaint.storage.model_cache import fetch_model_dir
        from batch_inpaint.storage.store import Storage

        store = storage if isinstance(storage, Storage) or storage is None else Storage(storage)
        source, local = str(fetch_model_dir(source, store, cache_dir)), True
    elif os.path.isdir(source):
        local = True
    elif source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise ConfigError(f"{what} {source!r}: no such directory (and not a Hub id org/name)")
    if os.path.isdir(source):
        check_safetensors(Path(source), what)
    kwargs: dict[str, Any] = {"local_files_only": local}
    if not local:
        kwargs["revision"] = revision  # None: the Hub's main branch
    if cache_dir and not local:
        kwargs["cache_dir"] = str(cache_dir)
    return source, kwargs


def check_safetensors(folder: Path, what: str = "model") -> None:
    """ConfigError when a model folder has pickled weights and no .safetensors file."""
    why = safetensors_problem([p.name for p in folder.rglob("*") if p.is_file()])
    if why:
        raise ConfigError(f"{what} {folder}: {why}")


def safetensors_problem(names: list[str]) -> str | None:
    """Why a model's files (names or paths) can't be loaded: pickled weights only, or no weights
    at all; None when a .safetensors file is there. Shared with the driver's check
    (job/driver/detect_checks.py), which lists s3:// prefixes too."""
    if any(n.endswith(".safetensors") for n in names):
        return None
    pickled = sorted(n for n in names if n.endswith(PICKLED))
    if pickled:
        return (
            f"only safetensors weights are loaded, and this folder holds "
            f"{', '.join(pickled[:3])}. Convert them to safetensors (model.save_pretrained(DIR) "
            "with transformers writes model.safetensors) or use a checkpoint that ships them."
        )
    return "no model.safetensors here; is this the model's folder?"


@contextlib.contextmanager
def quiet_loading():
    """transformers' "Loading weights" progress bars off while a provider loads (they would fill
    `detect`'s terminal), put back as they were after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_pretrained(cls: Any, source: str, kwargs: dict[str, Any], *, device: str, dtype: Any,
                    model_id: str, revision: str | None, what: str) -> Any:  # fmt: skip
    """cls.from_pretrained with safetensors only, on `device` in `dtype`, in eval mode; a
    ModelError that names the model and says what to pass when it can't be loaded."""
    from batch_inpaint.models.base import is_out_of_memory

    try:
        with quiet_loading():
            model = cls.from_pretrained(source, use_safetensors=True, dtype=dtype, **kwargs)
        return model.to(device).eval()
    except Exception as exc:
        if is_out_of_memory(exc) or isinstance(exc, ConfigError):
            raise
        rev = f" at revision {revision}" if revision else ""
        raise ModelError(
            f"could not load {what} {model_id!r}{rev}: {type(exc).__name__}: {exc}. Pass a local "
            "folder with config.json and model.safetensors, an s3:// URI of one, or a reachable "
            "Hub id (`batch-inpaint make-tiny-model --kind ...` writes random-weight ones)."
        ) from exc


def load_processor(cls: Any, source: str, kwargs: dict[str, Any], *, model_id: str,
                   what: str) -> Any:  # fmt: skip
    try:
        with quiet_loading():
            return cls.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelError(
            f"could not load the processor of {what} {model_id!r}: {type(exc).__name__}: {exc}"
        ) from exc


def check_model_type(source: str, kwargs: dict[str, Any], allowed: tuple[str, ...], *,
                     model_id: str, what: str) -> Any:  # fmt: skip
    """The checkpoint's config, after checking its model_type is one this provider runs."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelError(
            f"could not read the config of {what} {model_id!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if config.model_type not in allowed:
        raise ConfigError(
            f"{what} {model_id!r} is a {config.model_type!r} checkpoint; this provider runs "
            f"{', '.join(allowed)} checkpoints (docs/masks.md)"
        )
    return config


class PretrainedProvider(SourcedModel):
    """The constructor the transformers-backed mask providers share: the checkpoint's source
    (model_source), a check of its model_type against `model_types`, then `load_source`."""

    what = "model"  # how messages name it: "detector", "segmenter", ...
    model_types: tuple[str, ...] = ()

    def load(self, *, storage: Any, cache_dir: str | os.PathLike | None,
             local_files_only: bool) -> None:  # fmt: skip
        source, kw = model_source(self.model_id, self.revision, storage=storage,
                                  cache_dir=cache_dir, local_files_only=local_files_only,
                                  what=self.what)  # fmt: skip
        check_model_type(source, kw, self.model_types, model_id=self.model_id, what=self.what)
        self.load_source(source, kw)

    def load_source(self, source: str, kwargs: dict[str, Any]) -> None:
        raise NotImplementedError

    def pretrained(self, cls: Any, source: str, kwargs: dict[str, Any]) -> Any:
        """cls's weights by load_pretrained, on this provider's device and dtype."""
        return load_pretrained(cls, source, kwargs, device=self.device, dtype=self.dtype,
                               model_id=self.model_id, revision=self.revision,
                               what=self.what)  # fmt: skip

    def pretrained_processor(self, cls: Any, source: str, kwargs: dict[str, Any]) -> Any:
        return load_processor(cls, source, kwargs, model_id=self.model_id, what=self.what)

    @classmethod
    def adopt(cls, model: Any, *, model_id: str, device: str, dtype: Any) -> Any:
        """An instance around a model built in memory (from_model), loading nothing."""
        self = cls.__new__(cls)
        self.model_id, self.revision = model_id, None
        self.device, self.dtype = resolve(device, dtype)
        self.model = model.to(self.device, self.dtype).eval()
        self._lock = threading.Lock()
        return self
