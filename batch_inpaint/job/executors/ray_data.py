"""The Ray executor: the job's pipeline (job/pipeline.py) as a Ray Data graph,

    the row source (a manifest: read_parquet) -> drop finished rows -> repartition into blocks -> each step: a CPU task, or an
    actor pool for a step that holds a model (detect, model or fused, verify) -> the driver

streaming only small result rows back to the driver. Only modules under job/executors/ import
Ray; the stages they run are Ray-free."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator

import pyarrow as pa

from batch_inpaint.config import JobConfig
from batch_inpaint.job import pipeline
from batch_inpaint.job.driver.resources import DetectPlan, plan_resources, start_size
from batch_inpaint.job.executors import ray_errors
from batch_inpaint.job.report.progress import native_stderr_to
from batch_inpaint.job.stages import attempts
from batch_inpaint.job.stages.context import JobContext

ACTOR_INIT_DEATHS = 5  # consecutive model actors that may die while loading


class RayExecutor:
    name = "ray"
    cluster = None

    def connect(self, run) -> None:
        """Join --address or RAY_ADDRESS, else start a private local instance: before the run
        writes anything, so a cluster that can't be reached leaves a new output as it was."""
        self.cluster = _init_ray(run.config, run.echo)

    def results(self, job, inpainter_factory=None, provider_factory=None) -> Iterator[pa.Table]:
        import ray

        run = job.run
        cfg, echo, cluster = run.config, run.echo, self.cluster
        logs = cluster.session_dir and os.path.join(cluster.session_dir, "logs")
        if logs and not cfg.verbose:
            where = (
                "" if cluster.source in ("local", "existing") else " (the workers' on their nodes)"
            )
            echo(f"batch-inpaint: Ray's own logs are in {logs}{where}; --verbose shows them here")
        # Ray's core worker writes some harmless lines that read like errors to the driver's
        # stderr (and to its log file): off the terminal unless verbose.
        stderr_log = (
            None if cfg.verbose or not logs else os.path.join(logs, "batch-inpaint-driver.err")
        )
        with native_stderr_to(stderr_log):
            cfg_run, gpus, detect = plan_resources(cfg, ray.cluster_resources(), run.storage,
                                                   provider_factory, echo, cluster.source == "local")  # fmt: skip
            ctx = JobContext(config=cfg_run, storage=run.storage, manifest_base=run.scan.base,
                             spec=job.spec)  # fmt: skip
            ds = build_dataset(cfg_run, ctx, run.source, job.exclude, gpus, inpainter_factory,
                               detect=detect)  # fmt: skip
            # No prefetch: with it, Ray Data hands over a finished block only once the next one
            # is ready, so its rows reach a metadata part a whole block later (lost if killed).
            try:
                yield from ds.iter_batches(batch_format="pyarrow", batch_size=None,
                                           prefetch_batches=0)  # fmt: skip
            except Exception as exc:
                found = ray_errors.job_error(exc)  # e.g. a model actor that can't load it
                if found is None:
                    raise
                where = f" (Ray's account: {logs})" if logs else ""
                raise type(found)(f"{found}{where}", kind=found.kind) from None


def build_dataset(
    cfg: JobConfig,
    ctx: JobContext,
    source,
    exclude,
    gpus: float,
    inpainter_factory=None,
    detect: DetectPlan | None = None,
):
    import ray

    # An actor that dies while loading the model (node lost, OOM) is replaced a few times
    # (Ray's default: the first such death fails the job).
    ray.data.DataContext.get_current().max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS
    ds = source.ray_dataset(ray.data)  # job/io/sources.py: a manifest is read_parquet
    # Always: rows without an id never reach the stages (the driver wrote their error rows).
    # The ids to leave out go to the object store once (not pickled into every task); each
    # task reads them zero-copy and filters a whole block with one hash join.
    ds = ds.map_batches(drop_rows, batch_format="pyarrow", batch_size=None,
                        fn_kwargs={"exclude": ray.put(pipeline.id_array(exclude))})  # fmt: skip
    # A small manifest file is one read block, and Ray Data keeps a task's small outputs in one
    # block: one actor would get every row and the driver would see none until the end (no
    # parallel actors, no metadata parts, a killed run loses everything). Blocks of a couple of
    # model batches stream through the pool instead.
    block_rows = pipeline.block_rows(cfg)
    ds = ds.repartition(target_num_rows_per_block=block_rows)
    # The model pool starts with every actor the GPUs hold (Ray Data would grow it from min).
    start = start_size(cfg, gpus, ray.cluster_resources(), detect)
    for step in pipeline.steps(cfg, ctx, gpus, detect, inpainter_factory):
        ds = _map(ds, step, block_rows, start if step.pool == "model" else None)
    return ds


def _map(ds, step: pipeline.Step, block_rows: int, start: int | None = None):
    """One step of the pipeline: a CPU task, or an actor pool for a step that holds a model."""
    import ray

    if step.pool is None:
        return ds.map_batches(step.fn, batch_format="pyarrow", batch_size=step.batch_size,
                              fn_kwargs=step.args, num_cpus=step.cpus)  # fmt: skip
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for these two yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        return ds.map_batches(
            step.fn,
            batch_format="pyarrow",
            batch_size=step.batch_size,
            fn_constructor_kwargs=step.args,
            compute=ray.data.ActorPoolStrategy(
                min_size=step.slots[0], max_size=step.slots[1], initial_size=start
            ),
            num_gpus=step.gpus or None,
            num_cpus=step.cpus,
            # Actors always come back (node loss); a block's task is retried a bounded number
            # of times (Ray's default: for ever); job/stages/attempts.py turns deaths into error rows.
            max_restarts=-1,
            max_task_retries=attempts.task_retries(block_rows),
        )


def drop_rows(table: pa.Table, exclude) -> pa.Table:
    """pipeline.drop_rows, with `exclude` an Arrow array or its ObjectRef."""
    import ray

    return pipeline.drop_rows(
        table, ray.get(exclude) if isinstance(exclude, ray.ObjectRef) else exclude
    )


def _init_ray(cfg: JobConfig, echo):
    """Join --address or RAY_ADDRESS, else start a private local instance (never a cluster that
    merely runs on this machine); see job/executors/cluster.py. Returns the Cluster.

    Unless verbose, Ray keeps its own lines off the terminal: workers' output is not forwarded
    (log_to_driver), the driver's "ray" logger shows errors only, Ray Data's console handler too
    (its file handler still writes ray-data.log) and its progress bars are off."""
    import ray

    from batch_inpaint.job.executors.cluster import connect

    level = logging.WARNING if cfg.verbose else logging.ERROR
    cluster = connect(cfg.address, echo=echo, log_to_driver=cfg.verbose, logging_level=level)
    if not cfg.verbose and cluster.session_dir:
        ray_errors.raylet_lines_to(
            os.path.join(cluster.session_dir, "logs", "batch-inpaint-driver.err")
        )
    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = cfg.verbose and (
        os.environ.get("BATCH_INPAINT_PROGRESS_BARS", "1") == "1"
    )
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    return cluster
