"""Detection's checks on the driver, before any cluster work (ConfigError: exit status 2):
settings that can't work, settings a job without queries would ignore, and the detection models'
folders (the checks the providers make when they load, from the file list and config.json alone).
plan.check_run calls check_detection with job_queries() (job/stages/detect.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields

from batch_inpaint.errors import ConfigError
from batch_inpaint.manifest.schema import DETECT_COLUMN as QUERY_COLUMN
from batch_inpaint.storage.uri import join, redact_uri


def check_detection(cfg, queries: Sequence[str], storage=None) -> None:
    """Settings that can't work, found before any cluster work (ConfigError: exit 2).
    `queries`: job_queries(); `storage` reads s3:// model prefixes (default: the job's)."""
    from batch_inpaint.detect.provider import NONE

    if cfg.detection.max_residual is not None and not cfg.detection.verify:
        raise ConfigError("config field 'max_residual': needs verify (--verify / verify: true), "
                          "or unset max_residual")  # fmt: skip
    if not queries:
        if cfg.detection.verify:
            raise ConfigError("config field 'verify': nothing to verify: give detect "
                              "(--detect 'watermark') or a 'detect' column in the manifest")  # fmt: skip
        if not cfg.detection.detect:
            check_unused(cfg)
        return
    off = [n for n in ("detector", "text_detector")
           if str(getattr(cfg.detection, n) or "").strip().lower() in NONE and getattr(cfg.detection, n) is not None]  # fmt: skip
    if len(off) == 2:
        raise ConfigError("config fields 'detector' and 'text_detector' are both 'none': "
                          f"nothing can detect {', '.join(queries)}; give one of them")  # fmt: skip
    check_shipped(cfg, queries, off)
    for name in MODEL_KINDS:
        check_local_folder(cfg, name)
        check_model_files(cfg, name, storage)


def check_shipped(cfg, queries: Sequence[str], off: Sequence[str]) -> None:
    """The shipped text detector (text_detector unset or 'rapidocr') needs no folder and no
    network, only its packages: missing ones are said here, when a query would go to it."""
    from batch_inpaint.detect.base import TEXT_QUERIES
    from batch_inpaint.detect.shipped import SHIPPED, install_problem, is_shipped

    if not is_shipped(cfg.detection.text_detector):
        return
    if "detector" in off or any(q in TEXT_QUERIES for q in queries):
        problem = install_problem()
        if problem:
            raise ConfigError(
                f"config field 'text_detector': unset or {SHIPPED!r} runs the text detector "
                f"shipped in the rapidocr wheel, and {problem}; or give a PP-OCR checkpoint "
                "(--text-detector PaddlePaddle/PP-OCRv6_medium_det_safetensors) or 'none'"
            )


def check_unused(cfg) -> None:
    """A detection setting changed from its default in a job that detects nothing: a flag that
    would be ignored (e.g. --detector without --detect) is a mistake to say, not to skip."""
    from batch_inpaint.detect.options import DetectionOptions
    from batch_inpaint.option import default, yaml_key

    for f in fields(DetectionOptions):
        if f.name in ("detect", "verify", "max_residual"):  # checked above, with their words
            continue
        if getattr(cfg.detection, f.name) != default(f):
            raise ConfigError(
                f"config field '{yaml_key(f)}': set, but this job detects nothing (no detect "
                f"queries, and no row of the manifest's '{QUERY_COLUMN}' column left to detect); "
                f"give --detect 'watermark' or a '{QUERY_COLUMN}' column, or unset {yaml_key(f)}"
            )


# config field -> the `make-tiny-model --kind` that writes a test checkpoint of it
MODEL_KINDS = {"detector": "detector", "text_detector": "text-detector",
               "segmenter": "segmenter"}  # fmt: skip


def _model_types(name: str) -> tuple[str, ...]:
    if name == "detector":
        from batch_inpaint.detect.grounding import MODEL_TYPES
    elif name == "text_detector":
        from batch_inpaint.detect.text import MODEL_TYPES
    else:
        from batch_inpaint.detect.segment import MODEL_TYPES
    return MODEL_TYPES


def _here(cfg) -> bool:
    """Whether the detect actors run on this machine (a private local Ray instance)."""
    return not cfg.address and not os.environ.get("RAY_ADDRESS") or cfg.address == "local"


def _local_value(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", "file://"))


def check_local_folder(cfg, name: str) -> None:
    """A local model folder that is not on this machine, when the actors run here too."""
    from pathlib import Path

    value = getattr(cfg.detection, name) or ""
    if _local_value(value) and _here(cfg):
        path = Path(os.path.expanduser(value.removeprefix("file://")))
        if not path.is_dir():
            raise ConfigError(
                f"config field '{name}': {value} is not a folder on this machine (where the "
                "detect actors would load it); check the path, or build a test one with "
                f"`batch-inpaint make-tiny-model --kind {MODEL_KINDS[name]} DIR`"
            )


def check_model_files(cfg, name: str, storage=None) -> None:
    """The checks the provider makes when it loads (detect/loading.py: safetensors weights, a
    config.json of a model_type it runs), made on the driver from the file list and config.json
    alone, no weights read: for a local folder when the actors run here, and an s3:// prefix.
    A Hub id is left to the actors (the driver may have no network)."""
    import json

    from batch_inpaint.detect.loading import safetensors_problem
    from batch_inpaint.detect.provider import NONE

    value = getattr(cfg.detection, name)
    if value is None or value.strip().lower() in NONE:
        return
    if _local_value(value) or os.path.isdir(value):
        if not _here(cfg):  # on a cluster the folder may exist on the workers only
            return
        uri = os.path.abspath(os.path.expanduser(value.removeprefix("file://")))
    elif "://" in value:
        uri = value
    else:  # a Hub id
        return
    if storage is None:
        from batch_inpaint.storage.store import Storage

        storage = Storage(cfg.storage_options())
    prefix = uri.rstrip("/") + "/"
    files = [f[len(prefix) :] for f in storage.list(uri) if f.startswith(prefix)]
    where = f"config field '{name}': {redact_uri(value)}"
    hint = f"`batch-inpaint make-tiny-model --kind {MODEL_KINDS[name]} DIR` builds a test one"
    if not files:
        raise ConfigError(f"{where}: no files there; check the path ({hint})")
    why = safetensors_problem(files)
    if why:
        raise ConfigError(f"{where}: {why} ({hint})")
    if "config.json" not in files:
        raise ConfigError(f"{where} has no config.json; is this the model's folder? ({hint})")
    try:
        model_type = json.loads(storage.read_bytes(join(uri, "config.json"))).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{where}: config.json is not a JSON object: {exc}") from None
    allowed = _model_types(name)
    if model_type not in allowed:
        what = name.replace("_", " ")
        raise ConfigError(
            f"{where} is a {model_type!r} checkpoint; the {what} runs {', '.join(allowed)} "
            f"checkpoints (docs/masks.md; {hint})"
        )
