"""run_job: one run of the job, the same driver for every executor (job/executors/):

check (config, manifest, output; nothing written) -> lock -> open the run (what is done;
the executor connects before anything is written) -> the executor streams result rows into
metadata parts, with a progress line (shard outputs: each shard written once its rows are
final) -> flush -> finalize (invariants, _SUCCESS, run.json, report)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.job import executors
from batch_inpaint.job.driver import plan
from batch_inpaint.job.driver.finalize import finalize
from batch_inpaint.job.report.progress import Progress
from batch_inpaint.job.report.startup import Startup
from batch_inpaint.job.stages import attempts
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import Status


def run_job(
    config: JobConfig, *, echo=print, inpainter_factory=None, provider_factory=None
) -> dict:
    """Run one job to the end and return its summary (also written to `{output}/run.json`).

    Everything that can be wrong with the config, the manifest or the output is found before
    the executor starts; a run with nothing left to do starts none (no Ray). `inpainter_factory(ctx)
    -> Inpainter`, a picklable callable, replaces the model the config names in every model
    actor or slot (e.g. a test's failing model); it must match the config's model spec.
    `provider_factory(ctx) -> MaskProvider`, picklable too, replaces the configured detectors
    (job/stages/detect.py)."""
    executors.check_executor(config)  # --executor ray without Ray: exit 2 before any work
    storage = Storage(config.storage_options())
    run, state = plan.check_run(config, storage, echo)
    executor = startup = None

    def start(todo: int) -> None:  # before open_run writes anything
        nonlocal executor, startup
        if todo:
            executor, startup = start_executor(run, todo)

    with plan.lock_for(run):
        try:
            job = plan.open_run(run, state, before_writes=start)
            if job.todo:
                # run.storage: the lease is checked before its records are cleared
                with attempts.watch(run.storage, config.output, run.echo):  # says when actors die
                    stream(job, executor.results(job, inpainter_factory, provider_factory),
                           startup)  # fmt: skip
        finally:
            if startup is not None:  # a start that failed: its line goes, the error follows
                startup.close(started=False)
            run.echo = echo
        job.writer.flush()
        if job.shards is not None:  # the shards with nothing left to do (job/io/shard_writer.py)
            job.shards.finish()
        return finalize(run)


def start_executor(run, todo: int) -> tuple[executors.Executor, Startup | None]:
    """Pick the run's executor, say which and why, and connect it (before anything is written).
    For Ray, the start-up line (job/report/startup.py) runs from here to the first batch."""
    name, why = executors.choose(run.config, todo)
    run.echo(f"batch-inpaint: executor {name} ({why})")
    startup = None
    if name == "ray":
        from batch_inpaint.job.executors.ray_data import RayExecutor

        executor: executors.Executor = RayExecutor()
        startup = Startup("Ray and the model actors", run.echo, in_place=not run.config.verbose)
        run.echo = startup.start().echo
    else:
        from batch_inpaint.job.executors.local import LocalExecutor

        executor = LocalExecutor()
    try:
        executor.connect(run)
    except BaseException:
        if startup is not None:
            startup.close(started=False)
            run.echo = startup.plain_echo
        raise
    return executor, startup


def stream(job: plan.Plan, batches: Iterable[pa.Table], startup: Startup | None = None) -> None:
    """Result batches, as the executor finishes them, into metadata parts, with the progress
    (after the start-up line, which ends when the first batch arrives)."""
    run = job.run
    batches = iter(batches)
    first: list[pa.Table] = []
    with startup or contextlib.nullcontext():
        first.extend(itertools.islice(batches, 1))
    if startup is not None:
        run.echo = startup.plain_echo  # the progress bar wants the terminal's own print
    progress = Progress(job.todo, run.config.progress_interval_s, run.echo, started=run.started)
    try:
        for batch in itertools.chain(first, batches):
            if job.shards is not None:  # the rows' new images: into their shards, not metadata
                batch = job.shards.take(batch)
            job.writer.add(batch)
            run.processed += batch.num_rows
            errors = pc.sum(pc.equal(batch.column("status"), Status.ERROR.value)).as_py()
            progress.update(batch.num_rows, errors or 0)
    finally:
        progress.close()
