"""Can the model's weights be had here, in seconds? A Hub id is fine when the Hugging Face cache
holds its weights or the Hub says it has them within a few seconds; otherwise the run, the
dry run and `serve` stop at once with one message naming the ways out, where loading would spend
minutes in retries (offline) and then fail in every model actor.

A local diffusers folder must hold a pipeline index and UNet weights (folder_problem); local
files and object-storage prefixes are checked elsewhere (job/driver/plan.py's local check, models/spec.py
reading their configs)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from batch_inpaint.errors import ConfigError
from batch_inpaint.models.spec import DEFAULT_MODEL

CONNECT_TIMEOUT_S = 3.0  # one request, no retries: a reachable Hub answers well within it


def ways_out(model: str) -> str:
    """The ways to run without this model's weights, for every message that says so."""
    where = ""
    if not model.startswith(("/", ".", "~")) and "://" not in model and model.count("/") == 1:
        where = (
            f", e.g. from `hf download {model} --local-dir DIR` on a machine that reaches the Hub"
        )
    return (
        "ways out: --backend opencv (a classical fill, no weights); --backend lama --model FILE "
        f"(a LaMa .safetensors file, docs/models.md); --model DIR (a local diffusers folder{where})"
    )


def hub_id(backend: str, model: str | None) -> str | None:
    """The Hub id (org/name, or org/name/file for lama) the backend would download, or None
    when the model is a local path, an object-storage URI or no model at all."""
    from batch_inpaint.storage.uri import uri_scheme

    if backend == "diffusers":
        given = str(model or DEFAULT_MODEL)
        if uri_scheme(given) not in ("", "file") or given.startswith(("/", ".", "~")):
            return None
        return None if os.path.exists(given) or given.count("/") != 1 else given
    if backend == "lama" and model:
        given = str(model)
        if uri_scheme(given) not in ("", "file") or given.startswith(("/", ".", "~")):
            return None
        return None if os.path.exists(given) or given.count("/") < 1 else given
    return None


def _snapshot(repo: str, revision: str | None, cache_dir: str | None) -> Path | None:
    """The cached snapshot folder of `repo` at `revision` (a branch, tag or commit), if any."""
    from huggingface_hub import constants

    root = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    rev = revision or "main"
    ref = root / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snap = root / "snapshots" / commit
    return snap if snap.is_dir() else None


def cached(backend: str, given: str, revision: str | None, cache_dir: str | None = None) -> bool:
    """Whether the Hugging Face cache holds the weights loading needs (diffusers: the pipeline's
    model_index.json and UNet safetensors; lama: the named file, or a .safetensors file)."""
    parts = given.split("/")
    snap = _snapshot("/".join(parts[:2]), revision, cache_dir)
    if snap is None:
        return False
    if backend == "diffusers":
        return (snap / "model_index.json").is_file() and any(snap.glob("unet/*.safetensors"))
    name = "/".join(parts[2:])
    return (snap / name).is_file() if name else any(snap.rglob("*.safetensors"))


def hub_answer(repo: str, filename: str | None, revision: str | None,
               timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:  # fmt: skip
    """None when the Hub says within `timeout_s` that it has the file (or, without a file name,
    the model); else why not. One request, no retries: a TCP connect alone is not enough, as a
    proxy may accept it and answer nothing the Hub would."""
    from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host = urlsplit(constants.ENDPOINT).hostname or constants.ENDPOINT
    try:
        if filename:
            get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=timeout_s)
        else:
            HfApi().model_info(repo, revision=revision, timeout=timeout_s)
    except GatedRepoError:
        return "the Hub refused access (a gated model: accept its terms, then `hf auth login`)"
    except RepositoryNotFoundError:
        return "the Hub has no such model (or it is private: `hf auth login`)"
    except RevisionNotFoundError:
        return f"the Hub has no revision {revision!r} of it"
    except EntryNotFoundError:
        return f"the Hub's copy has no {filename}"
    except Exception as exc:  # noqa: BLE001 - unreachable, a proxy, a timeout: all say why
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"the Hub ({host}) did not answer: {type(exc).__name__}: {first}"
    return None


def folder_problem(folder: str) -> str | None:
    """Why a local diffusers folder can't be loaded (no pipeline index, no UNet weights), or
    None; what loading would find only in every model actor, after the output was claimed."""
    import json

    index = Path(folder, "model_index.json")
    try:
        ok = "_class_name" in json.loads(index.read_text())
    except (OSError, ValueError):
        ok = False
    if not ok:
        return f"{index} is missing or names no pipeline (_class_name)"
    if not any(Path(folder).glob("unet/*.safetensors")):
        return f"{folder}/unet/ holds no .safetensors weights"
    return None


def model_problem(backend: str, model: str | None, revision: str | None = None,
                  cache_dir: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:  # fmt: skip
    """Why `backend`'s model can't be had on this machine (the message to show), or None."""
    if backend == "diffusers" and model and os.path.isdir(os.path.expanduser(str(model))):
        why = folder_problem(os.path.expanduser(str(model)))
        if why:
            return (f"model folder {model} is not a diffusers checkpoint: {why} (write one with "
                    f"pipeline.save_pretrained); {ways_out(str(model))}")  # fmt: skip
        return None
    repo = hub_id(backend, model)
    if repo is None or cached(backend, repo, revision, cache_dir):
        return None
    parts = repo.split("/")
    name = "model_index.json" if backend == "diffusers" else "/".join(parts[2:]) or None
    why = hub_answer("/".join(parts[:2]), name, revision, timeout_s)
    if why is None:
        return None
    from huggingface_hub import constants

    rev = f" at revision {revision}" if revision else ""
    return (f"model {repo!r}{rev} ({backend}) can't be had: it is not in the Hugging Face cache "
            f"({cache_dir or constants.HF_HUB_CACHE}) and {why}; {ways_out(repo)}")  # fmt: skip


def check_model_available(backend: str, model: str | None, revision: str | None = None,
                          cache_dir: str | None = None) -> None:  # fmt: skip
    """ConfigError (exit 2) with model_problem's message when the model can't be had."""
    why = model_problem(backend, model, revision, cache_dir)
    if why:
        raise ConfigError(why)


def check_job_model(cfg) -> None:
    """check_model_available for a job (a JobConfig) whose model actors run on this machine (a
    private local Ray instance); on a cluster the workers may reach what this machine can't."""
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if not address or address == "local":
        check_model_available(cfg.backend, cfg.model, cfg.revision)
