"""The Ray Data job: the only module that imports ray. It wires the Ray-free stages into a graph,

    read_parquet -> drop finished rows -> prepare (CPU tasks) -> model (actor pool, GPU or CPU)
                 -> finish: paste, encode, write (CPU tasks) -> driver: metadata parts, finalize

and streams only small result rows back to the driver. When the model runs on the CPU the three
stages run fused in each actor of one pool (job/fused.py), so only rows travel between stages.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.job import attempts, plan
from batch_inpaint.job.detect_stage import DetectStage
from batch_inpaint.job.finalize import finalize
from batch_inpaint.job.fused import FusedStage
from batch_inpaint.job.report_progress import Progress, native_stderr_to
from batch_inpaint.job.resources import DetectPlan, plan_resources
from batch_inpaint.job.stages import JobContext, ModelStage, finish_batch, prepare_batch
from batch_inpaint.job.verify_stage import VerifyStage
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import Status


def run_job(
    config: JobConfig, *, echo=print, inpainter_factory=None, provider_factory=None
) -> dict:
    """Run one job to the end and return its summary (also written to `{output}/run.json`).

    Everything that can be wrong with the config, the manifest or the output is found before
    Ray starts; a run with nothing left to do never starts it. `inpainter_factory(ctx) ->
    Inpainter`, a picklable callable, replaces the model the config names in every model actor
    (e.g. a test's failing model); it must match the config's model spec. `provider_factory(ctx)
    -> MaskProvider`, picklable too, replaces the configured detectors (job/detect_stage.py)."""
    storage = Storage(config.storage_options())
    run, state = plan.check_run(config, storage, echo)
    with plan.lock_for(run):
        job = plan.open_run(run, state)
        if job.todo:
            with attempts.watch(storage, config.output, run.echo):  # says when actors die
                _process(job, inpainter_factory, provider_factory)
        job.writer.flush()
        return finalize(run)


def _process(job: plan.Plan, inpainter_factory, provider_factory=None) -> None:
    """Stream the rows to do through the Ray Data graph; result rows become metadata parts."""
    import ray

    run = job.run
    cfg, echo = run.config, run.echo
    cluster = _init_ray(cfg, echo)
    logs = cluster.session_dir and os.path.join(cluster.session_dir, "logs")
    if logs and not cfg.verbose:
        where = "" if cluster.source in ("local", "existing") else " (the workers' on their nodes)"
        echo(f"batch-inpaint: Ray's own logs are in {logs}{where}; --verbose shows them here")
    # Ray's core worker writes some harmless lines that read like errors to the driver's
    # stderr (and to its log file): off the terminal unless verbose.
    stderr_log = None if cfg.verbose or not logs else os.path.join(logs, "batch-inpaint-driver.err")
    with native_stderr_to(stderr_log):
        cfg_run, gpus, detect = plan_resources(cfg, ray.cluster_resources(), run.storage,
                                               provider_factory, echo, cluster.source == "local")  # fmt: skip
        ctx = JobContext(config=cfg_run, storage=run.storage, manifest_base=run.scan.base,
                         spec=job.spec)  # fmt: skip
        ds = build_dataset(cfg_run, ctx, run.storage, job.exclude, gpus, inpainter_factory,
                           detect=detect)  # fmt: skip
        progress = Progress(job.todo, cfg.progress_interval_s, echo)
        try:
            # No prefetch: with it, Ray Data hands over a finished block only once the next one
            # is ready, so its rows reach a metadata part a whole block later (lost if killed).
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None,
                                         prefetch_batches=0):  # fmt: skip
                job.writer.add(batch)
                run.processed += batch.num_rows
                errors = pc.sum(pc.equal(batch.column("status"), Status.ERROR.value)).as_py()
                progress.update(batch.num_rows, errors or 0)
        finally:
            progress.close()


BLOCK_BATCHES = 2  # model batches per block: the unit of streaming, retry and progress
ACTOR_INIT_DEATHS = 5  # consecutive model actors that may die while loading


def build_dataset(
    cfg: JobConfig,
    ctx: JobContext,
    storage: Storage,
    exclude,
    gpus: float,
    inpainter_factory=None,
    detect: DetectPlan | None = None,
):
    import ray

    # An actor that dies while loading the model (node lost, OOM) is replaced a few times
    # (Ray's default: the first such death fails the job).
    ray.data.DataContext.get_current().max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS
    fs, path = storage.pyarrow_filesystem(cfg.manifest)
    ds = ray.data.read_parquet(path, filesystem=fs)
    # Always: rows without an id never reach the stages (the driver wrote their error rows).
    # The ids to leave out go to the object store once (not pickled into every task); each
    # task reads them zero-copy and filters a whole block with one hash join.
    ds = ds.map_batches(drop_rows, batch_format="pyarrow", batch_size=None,
                        fn_kwargs={"exclude": ray.put(_id_array(exclude))})  # fmt: skip
    # A small manifest file is one read block, and Ray Data keeps a task's small outputs in one
    # block: one actor would get every row and the driver would see none until the end (no
    # parallel actors, no metadata parts, a killed run loses everything). Blocks of a couple of
    # model batches stream through the pool instead.
    block_rows = BLOCK_BATCHES * max(cfg.batch_size, 8)
    ds = ds.repartition(target_num_rows_per_block=block_rows)
    if detect is not None:  # only in jobs with queries: a job without keeps its graph
        ds = _detect_stage(ds, ctx, detect, block_rows)
    # Stages that run before prepare go here. Fused (job/fused.py, CPU models): prepare, model
    # and finish run in the model actors; only rows travel. Split: CPU tasks feed the GPU actors.
    if not cfg.fuse_stages:
        ds = ds.map_batches(
            prepare_batch,
            batch_format="pyarrow",
            batch_size=8,
            fn_kwargs={"ctx": ctx},
            num_cpus=cfg.cpus_per_task,
        )
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for these two yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        ds = ds.map_batches(
            FusedStage if cfg.fuse_stages else ModelStage,
            batch_format="pyarrow",
            batch_size=max(cfg.batch_size, 8),
            fn_constructor_kwargs={"ctx": ctx, "inpainter_factory": inpainter_factory},
            compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
            num_gpus=gpus or None,
            num_cpus=cfg.cpus_per_actor,
            # Actors always come back (node loss); a block's task is retried a bounded number
            # of times (Ray's default: for ever); job/attempts.py turns deaths into error rows.
            max_restarts=-1,
            max_task_retries=attempts.task_retries(block_rows),
        )
    if not cfg.fuse_stages:
        ds = ds.map_batches(
            finish_batch,
            batch_format="pyarrow",
            batch_size=8,
            fn_kwargs={"ctx": ctx},
            num_cpus=cfg.cpus_per_task,
        )
    # Stages that run after finish go here.
    if detect is not None and cfg.verify:  # the detector again, on the outputs it just wrote
        ds = _detect_stage(ds, ctx, detect, block_rows, VerifyStage)
    return ds


def _detect_stage(ds, ctx: JobContext, detect: DetectPlan, block_rows: int, stage=DetectStage):
    """The detect stage's actor pool; with stage=VerifyStage, verify's (its own pool, alike)."""
    import ray

    cfg = ctx.config
    if detect.gpus == 0 and cfg.device.startswith("cuda"):  # the model's GPU, not the detector's
        ctx = dataclasses.replace(ctx, config=dataclasses.replace(cfg, device="cpu"))
    elif detect.gpus > 0:
        ctx = dataclasses.replace(ctx, config=dataclasses.replace(cfg, device="cuda"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        return ds.map_batches(
            stage,
            batch_format="pyarrow",
            batch_size=cfg.detect_batch_size,
            fn_constructor_kwargs={
                "ctx": ctx,
                "provider_factory": detect.provider_factory,
                "queries": list(detect.queries),
            },
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.detect_actors),
            num_gpus=detect.gpus or None,
            num_cpus=cfg.cpus_per_detect_actor,
            max_restarts=-1,
            max_task_retries=attempts.task_retries(block_rows),  # as the model's: bounded
        )


def _id_array(ids) -> pa.Array:
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids
    return pa.array(sorted(ids), pa.string())


def drop_rows(table: pa.Table, exclude) -> pa.Table:
    """The rows to process: an id, and not in `exclude` (done or duplicated ids: an Arrow array,
    or its ObjectRef)."""
    import ray

    ids = pc.cast(table.column("id"), pa.string())
    keep = pc.greater(pc.utf8_length(pc.fill_null(ids, "")), 0)
    value_set = _id_array(ray.get(exclude) if isinstance(exclude, ray.ObjectRef) else exclude)
    if len(value_set) > 4 * len(ids):  # probing the big set is cheaper than hashing it
        value_set = value_set.filter(pc.fill_null(pc.is_in(value_set, value_set=ids), False))
    if len(value_set):
        keep = pc.and_(keep, pc.invert(pc.fill_null(pc.is_in(ids, value_set=value_set), False)))
    return table.filter(keep)


def _init_ray(cfg: JobConfig, echo):
    """Join --address or RAY_ADDRESS, else start a private local instance (never a cluster that
    merely runs on this machine); see job/cluster.py. Returns the Cluster.

    Unless verbose, Ray keeps its own lines off the terminal: workers' output is not forwarded
    (log_to_driver), the driver's "ray" logger shows errors only, Ray Data's console handler too
    (its file handler still writes ray-data.log) and its progress bars are off."""
    import ray

    from batch_inpaint.job.cluster import connect

    level = logging.WARNING if cfg.verbose else logging.ERROR
    cluster = connect(cfg.address, echo=echo, log_to_driver=cfg.verbose, logging_level=level)
    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = cfg.verbose and (
        os.environ.get("BATCH_INPAINT_PROGRESS_BARS", "1") == "1"
    )
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    return cluster
