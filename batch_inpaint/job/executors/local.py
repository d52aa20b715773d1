"""The local executor: the job's pipeline (job/pipeline.py) in the driver's process, no Ray.

The run's row source (job/io/sources.py) gives its rows in blocks (a manifest: its parts read with
pyarrow, as the driver's scan reads them), the done, duplicate
and id-less rows dropped with the same Arrow join as the Ray path (pipeline.drop_rows), and the
rest cut into blocks of the same size. A few threads each take a block through every step; a
step that holds a model (detect, model or fused, verify) has slots, each a loaded instance used
by one thread at a time, so while one thread is in the model others fetch and decode the next
block or encode and write the last (decode, encode, OpenCV and torch release the GIL). On the
CPU the fused step has one slot per core, as the Ray path has one actor per core.

What Ray gives and this does not: a row that kills the process (out of memory) kills the run;
a rerun resumes from the metadata parts written so far."""

from __future__ import annotations

import dataclasses
import os
import queue
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import pyarrow as pa

from batch_inpaint.config import JobConfig
from batch_inpaint.job import pipeline
from batch_inpaint.job.driver.resources import detect_plan, gpus_per_actor, pool
from batch_inpaint.job.stages.context import JobContext

MAX_THREADS = 8


class LocalExecutor:
    name = "local"

    def connect(self, run) -> None:
        """Nothing to reach: the rows run in this process."""

    def results(self, job, inpainter_factory=None, provider_factory=None) -> Iterator[pa.Table]:
        run = job.run
        cfg, gpus, detect = resolve(run.config, run.storage, provider_factory, run.echo)
        ctx = JobContext(config=cfg, storage=run.storage, manifest_base=run.scan.base,
                         spec=job.spec)  # fmt: skip
        steps = pipeline.steps(cfg, ctx, gpus, detect, inpainter_factory)
        slots = {pool: _slots([s for s in steps if s.pool == pool])
                 for pool in dict.fromkeys(s.pool for s in steps if s.pool)}  # fmt: skip
        threads = max([len(q.queue) for q in slots.values()] + [1])
        if any(s.pool is None for s in steps):  # CPU tasks beside the model: a thread per core
            threads = max(threads, 1 + _cpus())
        threads = min(threads, MAX_THREADS)
        # A small run in blocks of the usual size would leave threads idle (20 rows: 16 + 4).
        rows = min(pipeline.block_rows(cfg), max(1, -(-job.todo // threads)))
        blocks = read_blocks(run.source, job.exclude, rows)
        yield from run_blocks(blocks, steps, slots, threads)


def resolve(cfg: JobConfig, storage, provider_factory, echo):
    """(config as this run uses it, GPUs of the model, DetectPlan or None) on this machine: the
    model on one device; fused on the CPU with one slot per core, as far as half the memory
    holds them (job/resources.pool, as for a Ray pool)."""
    from batch_inpaint.job.executors import visible_gpus

    n_gpus = min(visible_gpus(cfg), 1)
    gpus = min(gpus_per_actor(cfg, n_gpus, echo=lambda *_: None), 1.0)
    device = cfg.device if cfg.device != "auto" else ("cuda" if gpus > 0 else "cpu")
    if device == "cpu" and cfg.backend != "opencv" and cfg.device == "auto":
        echo("batch-inpaint: no GPU here, so the model runs on the CPU (fp32, slow)")
    cfg = dataclasses.replace(cfg, device=device)
    detect = detect_plan(cfg, storage, provider_factory, {"GPU": n_gpus}, echo)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return pool(cfg, gpus, float(_cpus()), memory, 0), gpus, detect


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _slots(steps: list[pipeline.Step]) -> queue.Queue:
    """A pool's slots: one on a GPU (one device), else as many as the pool's largest size (fused
    on the CPU: one per core). A slot holds each step's instance (step name -> instance). Verify
    shares the detect step's provider, loaded once (on Ray each has a pool of its own); sharing a
    slot, they never run it at once."""
    first = steps[0]
    n = 1 if first.gpus > 0 else min(max(1, first.slots[1]), MAX_THREADS)
    free: queue.Queue = queue.Queue()
    for _ in range(n):
        slot: dict = {}
        for step in steps:
            args = step.args
            if step.name == "verify" and "detect" in slot:
                provider = slot["detect"].provider
                args = {**args, "provider_factory": lambda _ctx, p=provider: p}
            slot[step.name] = step.fn(**args)
        free.put(slot)
    return free


def read_blocks(source, exclude: pa.Array, rows: int) -> Iterator[pa.Table]:
    """The source's rows to do (job/io/sources.py), in blocks of `rows`: done, duplicate and
    id-less rows dropped before the rows are cut."""
    return source.blocks(rows, lambda table: pipeline.drop_rows(table, exclude))


def run_blocks(blocks, steps, slots: dict[str, queue.Queue], threads: int) -> Iterator[pa.Table]:
    """Each block through every step in a pool of `threads`; finished blocks as they finish. At
    most threads + 1 blocks are in flight."""
    pool_ = ThreadPoolExecutor(threads, thread_name_prefix="batch-inpaint")
    pending: set[Future] = set()
    try:
        for block in blocks:
            pending.add(pool_.submit(_through, block, steps, slots))
            while len(pending) > threads:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
    finally:
        pool_.shutdown(wait=True, cancel_futures=True)


def _through(table: pa.Table, steps, slots: dict[str, queue.Queue]) -> pa.Table:
    for step in steps:
        if step.pool is None:
            table = _batched(table, step.batch_size, lambda t, s=step: s.fn(t, **s.args))
            continue
        free = slots[step.pool]
        slot = free.get()
        try:
            table = _batched(table, step.batch_size, slot[step.name])
        finally:
            free.put(slot)
    return table


def _batched(table: pa.Table, size: int, fn) -> pa.Table:
    """fn over the table in batches of `size` rows (as Ray Data's map_batches calls it)."""
    if table.num_rows <= size:
        return fn(table)
    parts = [fn(table.slice(i, size)) for i in range(0, table.num_rows, size)]
    return pa.concat_tables(parts)
