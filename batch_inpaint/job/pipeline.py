"""The job's pipeline, described once: which stages run, in which order, on what batches and with
what resources. Both executors (job/executors/: `local` in this process, `ray` over Ray Data) read
this description, so they cannot drift apart:

    manifest rows -> drop done/duplicate/no-id rows -> blocks of BLOCK_BATCHES model batches
      -> [detect] -> prepare -> model -> finish -> [verify]          (a model on a GPU)
      -> [detect] -> fused (prepare, model, finish in one)  -> [verify]  (a model on the CPU)

A step is a plain function over Arrow tables (a stateless task) or a class holding a loaded model
(a pool: Ray's actors, or the local executor's slots). No Ray here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver.resources import DetectPlan
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.detect import DetectStage
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.fused import FusedStage
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.job.stages.verify import VerifyStage

BLOCK_BATCHES = 2  # model batches per block: the unit of streaming, retry and progress
TASK_BATCH = 8  # rows per call of the CPU tasks (prepare, finish)


@dataclass(frozen=True)
class Step:
    """One stage. `fn` is a function `fn(table, **args)` (pool None: a task), or a class built as
    `fn(**args)` once per pool slot whose instances are called on tables (pool: "model" or
    "detect"). `slots` is (smallest, largest) pool size; `gpus`/`cpus` what each slot asks for."""

    name: str
    fn: Callable
    batch_size: int
    args: dict[str, Any] = field(default_factory=dict)
    pool: str | None = None
    slots: tuple[int, int] = (1, 1)
    gpus: float = 0.0
    cpus: float | None = None


def block_rows(cfg: JobConfig) -> int:
    """Rows per block: a couple of model batches. A small manifest file is one read block; cut
    smaller, blocks stream through the pool, so rows reach the metadata as they finish."""
    return BLOCK_BATCHES * model_batch(cfg)


def model_batch(cfg: JobConfig) -> int:
    return max(cfg.batch_size, 8)


def steps(
    cfg: JobConfig,
    ctx: JobContext,
    gpus: float,
    detect: DetectPlan | None = None,
    inpainter_factory=None,
) -> list[Step]:
    """The stages of a run whose config has its resources resolved (job/driver/resources.py): device,
    fuse_stages, max_actors and the CPU shares. Fused (a model on the CPU): prepare, model and
    finish run in one step, so only rows travel; split, CPU tasks keep a GPU model fed."""
    out = []
    if detect is not None:  # only in jobs with queries: a job without keeps its graph
        out.append(_detector("detect", DetectStage, ctx, detect))
    model_args = {"ctx": ctx, "inpainter_factory": inpainter_factory}
    model = dict(batch_size=model_batch(cfg), args=model_args, pool="model",
                 slots=(cfg.min_actors, cfg.max_actors or cfg.min_actors), gpus=gpus,
                 cpus=cfg.cpus_per_actor)  # fmt: skip
    if cfg.fuse_stages:
        out.append(Step("fused", FusedStage, **model))
    else:
        task = {"batch_size": TASK_BATCH, "args": {"ctx": ctx}, "cpus": cfg.cpus_per_task}
        out.append(Step("prepare", prepare_batch, **task))
        out.append(Step("model", ModelStage, **model))
        out.append(Step("finish", finish_batch, **task))
    if (
        detect is not None and cfg.detection.verify
    ):  # the detector again, on the outputs it just wrote
        out.append(_detector("verify", VerifyStage, ctx, detect))
    return out


def _detector(name: str, cls, ctx: JobContext, detect: DetectPlan) -> Step:
    """The detect (or verify) pool: on the model's device only when it has a GPU share."""
    cfg = ctx.config
    if detect.gpus == 0 and cfg.device.startswith("cuda"):  # the model's GPU, not the detector's
        ctx = dataclasses.replace(ctx, config=dataclasses.replace(cfg, device="cpu"))
    elif detect.gpus > 0:
        ctx = dataclasses.replace(ctx, config=dataclasses.replace(cfg, device="cuda"))
    args = {
        "ctx": ctx,
        "provider_factory": detect.provider_factory,
        "queries": list(detect.queries),
    }
    return Step(name, cls, cfg.detection.detect_batch_size, args, pool="detect",
                slots=(1, cfg.detection.detect_actors), gpus=detect.gpus,
                cpus=cfg.detection.cpus_per_detect_actor)  # fmt: skip


def id_array(ids) -> pa.Array:
    """The ids to leave out as one Arrow string array (an array, or any iterable of ids)."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids
    return pa.array(sorted(ids), pa.string())


def drop_rows(table: pa.Table, exclude) -> pa.Table:
    """The rows to process: an id, and not in `exclude` (done or duplicated ids: an Arrow array
    or any iterable of ids). One hash join per block."""
    ids = pc.cast(table.column("id"), pa.string())
    keep = pc.greater(pc.utf8_length(pc.fill_null(ids, "")), 0)
    value_set = id_array(exclude)
    if len(value_set) > 4 * len(ids):  # probing the big set is cheaper than hashing it
        value_set = value_set.filter(pc.fill_null(pc.is_in(value_set, value_set=ids), False))
    if len(value_set):
        keep = pc.and_(keep, pc.invert(pc.fill_null(pc.is_in(ids, value_set=value_set), False)))
    return table.filter(keep)
