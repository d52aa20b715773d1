"""Executors: what runs the job's pipeline (job/pipeline.py) over the rows a run has to do.

- `local` (job/executors/local.py): in the driver's process, with threads around the model; no
  Ray import at all, and nothing to start. Small runs and one device.
- `ray` (job/executors/ray_data.py): Ray Data over actor pools, on a private local Ray instance
  or a cluster (job/executors/cluster.py). Many rows, several GPUs, or a cluster.

`--executor auto` (the default) picks `ray` when the run names a cluster (--address or
RAY_ADDRESS), Ray is already initialized in the process, or the run needs more than one device
or has more than LOCAL_MAX_ROWS rows to do; else `local`.
Only modules under job/executors/ import Ray; Ray is an optional dependency
(`pip install 'batch-inpaint[ray]'`)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Protocol

import pyarrow as pa

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError

# auto: a run with more rows to do than this goes to Ray. bench e1 (docs/benchmarks.md): local
# was faster at 20, 200 and 1,000 rows of 512² on 2 cores; Ray's ~15 s start-up is over a tenth
# of a local run (~19 ms a row) below ~8,000 rows. Past that, Ray's isolation of a row that kills
# its worker, and its processes (no shared interpreter), are worth its start-up.
LOCAL_MAX_ROWS = 10_000
INSTALL_RAY = "Please install batch-inpaint[ray] (pip install 'batch-inpaint[ray]')"


class Executor(Protocol):
    name: str

    def connect(self, run) -> None:
        """Before the run writes anything: reach what runs the rows (ray: the cluster)."""

    def results(self, job, inpainter_factory=None, provider_factory=None) -> Iterator[pa.Table]:
        """Run the pipeline over the rows `job` has to do; yield finished result batches."""


def ray_installed() -> bool:
    if "ray" in sys.modules:  # None when blocked (tests run the local path that way)
        return sys.modules["ray"] is not None
    return importlib.util.find_spec("ray") is not None


def ray_initialized() -> bool:
    ray = sys.modules.get("ray")  # never imported here for the question
    return ray is not None and bool(getattr(ray, "is_initialized", lambda: False)())


def check_executor(cfg: JobConfig) -> None:
    """Before any work (exit 2): the executor asked for can run here."""
    if cfg.executor == "local" and cfg.address:
        raise ConfigError("--executor local runs in this process and joins no Ray cluster: "
                          f"drop --address {cfg.address}, or use --executor ray")  # fmt: skip
    wants_ray = cfg.executor == "ray" or (cfg.executor == "auto" and _cluster_named(cfg))
    if wants_ray and not ray_installed():
        named = _cluster_named(cfg)
        why = "--executor ray" if cfg.executor == "ray" else f"a Ray cluster ({named})"
        raise ConfigError(f"{why} needs Ray, which is not installed. {INSTALL_RAY}, or run "
                          "with --executor local (in this process, one device)")  # fmt: skip


def _cluster_named(cfg: JobConfig) -> str | None:
    if cfg.address:
        return f"--address {cfg.address}"
    return "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS", "").strip() else None


def choose(cfg: JobConfig, todo: int) -> tuple[str, str]:
    """(executor, why) for a run with `todo` rows to do."""
    if cfg.executor != "auto":
        return cfg.executor, "--executor"
    named = _cluster_named(cfg)
    if named:
        return "ray", f"{named} names a cluster"
    if ray_initialized():  # a notebook or a test that called ray.init(): its instance is used
        return "ray", "Ray is already initialized in this process"
    gpus = visible_gpus(cfg)
    reason = None
    if gpus > 1 and cfg.device != "cpu":
        reason = f"{gpus} GPUs are visible"
    elif gpus and (cfg.max_actors or 1) > 1:
        reason = f"max_actors {cfg.max_actors} model actors on GPUs"
    elif todo > LOCAL_MAX_ROWS:
        reason = f"{todo} rows to do, over {LOCAL_MAX_ROWS}"
    if reason is None:
        return "local", f"{todo} rows to do, one device"
    if not ray_installed():
        return "local", f"{reason}, but Ray is not installed ({INSTALL_RAY} to use them all)"
    return "ray", reason


def visible_gpus(cfg: JobConfig) -> int:
    """CUDA devices this process sees (0 for a run on the CPU), without importing torch when
    CUDA_VISIBLE_DEVICES says."""
    if cfg.device == "cpu" or (cfg.backend == "opencv" and not cfg.detection.detect):
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
