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
from batch_inpaint.job import attempts, detect_stage, plan
from batch_inpaint.job.detect_stage import DetectStage
from batch_inpaint.job.finalize import finalize
from batch_inpaint.job.fused import FusedStage
from batch_inpaint.job.report_progress import Progress, native_stderr_to
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
        res = ray.cluster_resources()
        gpus = _gpus_per_actor(cfg, res.get("GPU", 0), echo)
        device = cfg.device if cfg.device != "auto" else ("cuda" if gpus > 0 else "cpu")
        cfg_run = dataclasses.replace(cfg, device=device)
        detect = _detect_plan(cfg_run, run.storage, provider_factory, res, echo)
        if detect and detect.gpus and cfg.gpus_per_actor is None and gpus >= 1:
            # Unset shares: one GPU holds a model actor and the detect (and verify) actors,
            # else on a one-GPU node they would wait on each other for ever.
            gpus = max(1.0 - detect.gpus * detect.pools, 0.25)
        cfg_run = _pool(cfg_run, gpus, res.get("CPU", 1), res.get("memory"))
        ctx = JobContext(config=cfg_run, storage=run.storage, manifest_base=run.scan.base,
                         spec=job.spec)  # fmt: skip
        if detect:
            _check_room(cfg_run, detect, gpus, res, echo)
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
        ds = _detect_stage(ds, ctx, detect)
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
        ds = _detect_stage(ds, ctx, detect, VerifyStage)
    return ds


@dataclasses.dataclass(frozen=True)
class DetectPlan:
    """The detect stage of a job with queries (job/detect_stage.py): its actors' share."""

    queries: tuple[str, ...]
    gpus: float
    provider_factory: object = None
    pools: int = 1  # 2 with verify: its pool is the detect pool's twin


def _detect_plan(
    cfg: JobConfig, storage: Storage, provider_factory, resources: dict, echo
) -> DetectPlan | None:
    """None for a job without queries; else the detect actors' GPU share: as configured, else
    0.25 when the cluster has GPUs (the detector is small beside the inpainting model), else 0."""
    queries = detect_stage.job_queries(storage, cfg)
    if not queries:
        return None
    gpus = cfg.gpus_per_detect_actor
    if gpus is None:
        gpus = 0.25 if resources.get("GPU", 0) >= 1 and cfg.device != "cpu" else 0.0
    echo(f"batch-inpaint: detecting {', '.join(queries)} on "
         f"{'GPU' if gpus > 0 else 'CPU'} actors before inpainting")  # fmt: skip
    return DetectPlan(tuple(queries), gpus, provider_factory, 2 if cfg.verify else 1)


def _check_room(cfg: JobConfig, detect: DetectPlan, gpus: float, resources: dict, echo) -> None:
    """Say so when the smallest pools of every stage can't all run at once: the job would wait."""
    cpus = cfg.cpus_per_detect_actor * detect.pools + cfg.cpus_per_actor * cfg.min_actors
    cpus += 0 if cfg.fuse_stages else cfg.cpus_per_task
    need_gpus = detect.gpus * detect.pools + gpus * cfg.min_actors
    for what, need, flags in (
        ("CPU", cpus, "--cpus-per-detect-actor / --cpus-per-actor / --cpus-per-task"),
        ("GPU", need_gpus, "--gpus-per-detect-actor / --gpus-per-actor"),
    ):
        have = resources.get(what, 0)
        if need > have and (what == "CPU" or have > 0):
            echo(f"batch-inpaint: the detect and model actors need {need:g} {what}s, the cluster "
                 f"has {have:g}: the job waits for more; lower {flags}")  # fmt: skip


def _detect_stage(ds, ctx: JobContext, detect: DetectPlan, stage=DetectStage):
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
            max_task_retries=3,
        )


# Memory one CPU model actor holds, in GiB: diffusers measured (bench sd2-job: SD2 in fp32,
# 6.0 GiB peak RSS); the others are upper guesses. A fused pool takes at most half the
# cluster's memory, so a laptop running SD on its CPU gets one actor, not one per core.
CPU_ACTOR_GIB = {"opencv": 0.5, "tiny": 0.5, "lama": 1.5, "diffusers": 6.5}


def _pool(
    cfg: JobConfig, gpus: float, cluster_cpus: float, cluster_memory: float | None = None
) -> JobConfig:
    """The config with fuse_stages and max_actors as this run uses them. Unset, stages fuse
    when the model runs on CPU actors, and a fused CPU pool grows to one actor per
    cpus_per_actor CPUs of the cluster (a laptop's cores all work) as far as half the
    cluster's memory (bytes, Ray's "memory" resource) holds them; a GPU pool stays at 1."""
    fuse = cfg.fuse_stages if cfg.fuse_stages is not None else gpus == 0
    most = cfg.max_actors
    if most is None:
        most = 1
        if fuse and gpus == 0:
            most = int(cluster_cpus // cfg.cpus_per_actor)
            if cluster_memory:
                per_actor = CPU_ACTOR_GIB.get(cfg.backend, 6.5) * 2**30
                most = min(most, int(cluster_memory / 2 // per_actor))
        most = max(most, cfg.min_actors, 1)
    return dataclasses.replace(cfg, fuse_stages=fuse, max_actors=most)


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


def _gpus_per_actor(cfg: JobConfig, cluster_gpus: float, echo=print) -> float:
    """GPUs per model actor: as configured; else 1 for device cuda or when the cluster has GPUs;
    else 0 (CPU actors, fp32). A cluster whose GPU workers autoscale from zero shows no GPU at
    start: ask for them with gpus_per_actor: 1 or device: cuda."""
    if cfg.gpus_per_actor is not None:
        if cfg.gpus_per_actor > 0 and cluster_gpus == 0:
            echo(
                f"batch-inpaint: gpus_per_actor={cfg.gpus_per_actor} but the cluster has no GPU "
                "yet; the actors wait for the autoscaler to add GPU workers"
            )
        return cfg.gpus_per_actor
    if cfg.device == "cpu" or cfg.backend == "opencv":
        return 0.0
    if cfg.device == "cuda" or cluster_gpus >= 1:
        return 1.0
    echo(
        "batch-inpaint: the cluster has no GPU, so the model runs on CPU actors (fp32, slow); "
        "on a cluster whose GPU workers autoscale from zero, pass --gpus-per-actor 1"
    )
    return 0.0


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
