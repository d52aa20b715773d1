"""The driver's work before any cluster work, in order: read the manifest's schema and ids, check
the output location and who owns it, take the output's lock, then open the run: claim the
output, withdraw the last run's `_SUCCESS`, and decide from the results which rows are done.
Anything wrong stops here, before a GPU is asked for."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.job.driver import guard, results
from batch_inpaint.job.driver.detect_checks import check_detection
from batch_inpaint.job.driver.finalize import RunState
from batch_inpaint.job.driver.lock import LeasedStorage, OutputLock
from batch_inpaint.job.driver.scan import has_id, scan_manifest
from batch_inpaint.job.io.output_folder import JOB_JSON, SUCCESS
from batch_inpaint.job.io.shard_source import with_output_format
from batch_inpaint.job.io.shard_writer import ShardCommitter, shard_of
from batch_inpaint.job.stages import detect as detect_stage
from batch_inpaint.models.availability import check_job_model
from batch_inpaint.models.spec import ModelSpec, model_spec
from batch_inpaint.storage.credentials import check_credentials
from batch_inpaint.storage.store import Storage


@dataclass
class Plan:
    """A run that may start: its state, the rows to leave out (ids, an Arrow array), and the
    model it will use."""

    run: RunState
    spec: ModelSpec
    writer: results.MetadataWriter
    exclude: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    todo: int = 0
    shards: ShardCommitter | None = None  # shard outputs: writes each shard once it is final


@dataclass
class Decision:
    """Which manifest rows a run leaves out: `exclude` (done ids and duplicated ids),
    how many manifest ids are `done` and how many rows are left `todo`."""

    exclude: pa.Array
    done: int
    todo: int
    done_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))


def decide(run: RunState) -> Decision:
    """What earlier runs finished, against the manifest's ids; reads the results' few columns
    it needs and writes nothing. Columnar throughout: hash joins over Arrow arrays, so 10 M rows
    plan in seconds within about 1 GB (docs/architecture.md, "Driver cost at scale")."""
    table = None
    if run.config.resume:  # stops here if it can't tell (a listing or read that failed, damage)
        table, _ = results.read_results(run.storage, run.config.output, results.PLAN_COLUMNS)
    return decide_from(run, table)


def decide_from(run: RunState, table: pa.Table | None) -> Decision:
    """decide() on results already read (`table`: None when there are none)."""
    cfg, storage, scan = run.config, run.storage, run.scan
    done = pa.array([], pa.string())
    if cfg.resume:
        done = results.finished_ids(storage, cfg.output, cfg.retry_errors, table, run.samples)
    # One hash of the done ids (unique: one result row per id), probed by every manifest id;
    # the duplicated ids are few. A duplicated id that is done counts once.
    in_done = pc.is_in(scan.ids, value_set=done)
    dup = pc.is_in(scan.ids, value_set=scan.duplicates)
    n_done = _count(pc.and_(in_done, pc.invert(dup)))
    n_done += _count(pc.is_in(done, value_set=scan.duplicates))
    left = pc.and_(has_id(scan.ids), pc.invert(pc.or_(in_done, dup)))
    exclude = pa.concat_arrays([done, scan.duplicates])  # an id twice in it does no harm
    return Decision(exclude, n_done, _count(left), done)


def _count(mask) -> int:
    return pc.sum(pc.cast(mask, pa.int64())).as_py() or 0


def check_run(config: JobConfig, storage: Storage, echo=print) -> tuple[RunState, str]:
    """Checks that need no lock: the config, the manifest, the output's location and owner."""
    cfg = config.require_io().validate()
    storage.check(cfg.manifest)
    storage.check(cfg.output)
    check_credentials(storage.options, [cfg.manifest, cfg.output])  # once, before any read
    check_local_model(cfg)
    scan = scan_manifest(storage, cfg)  # every part's schema, the ids, what the manifest reads
    cfg = with_output_format(cfg, scan.source)  # auto: files, or the shards' own format
    check_detection(cfg, detect_stage.job_queries(storage, cfg))
    guard.check_output_location(cfg.output, scan.inputs)
    state = guard.check_owner(storage, cfg.output, cfg.allow_non_empty_output)
    check_job_model(cfg)  # a Hub id: cached, or a Hub that answers (not minutes of retries)
    return RunState(cfg, storage, scan, results.new_run_id(), time.time(), echo=echo), state


@contextlib.contextmanager
def lock_for(run: RunState) -> Iterator[OutputLock]:
    """Hold the output's lock; meanwhile `run.storage` checks the lease before every write and
    delete (LeasedStorage), so a run that lost the lock stops with LostLockError."""
    plain = run.storage
    with OutputLock(plain, run.config.output, ttl_s=run.config.lock_ttl_s) as lock:
        run.storage = LeasedStorage(plain, lock)
        try:
            yield lock
        finally:
            run.storage = plain


def open_run(run: RunState, state: str, before_writes=None) -> Plan:
    """Under the lock: read what earlier runs finished (every refusal comes before any write: a
    refused run changes nothing), call `before_writes(todo)` (the Ray executor joins its cluster
    there: one that can't be reached leaves a new output unwritten), then claim the output,
    withdraw `_SUCCESS` (this run may change what it vouched for), write job.json and the
    driver's error rows."""
    cfg, storage, scan = run.config, run.storage, run.scan
    if not cfg.resume:  # no resume still reads the results: a damaged part stops the run
        results.read_results(storage, cfg.output, results.PLAN_COLUMNS)
    decision = decide(run)
    todo = decision.todo
    run.echo(
        f"batch-inpaint: {len(scan.ids)} manifest rows, {decision.done} already done, "
        f"{scan.bad_rows.num_rows} with a duplicate or missing id, {todo} to process -> {cfg.output}"
    )
    spec = model_spec(cfg.backend, cfg.model, cfg.revision, storage=storage)
    if before_writes is not None:
        before_writes(todo)
    if state != "ours":
        guard.claim(storage, cfg.output, run.run_id, state)
    folder = run.folder  # run.storage: leased, its writes check the lock
    if folder.exists(SUCCESS):
        folder.delete(SUCCESS)
    folder.write(JOB_JSON, results.dumps(results.job_json(cfg, run.run_id)))
    writer = results.MetadataWriter(
        storage, cfg.output, run.run_id, cfg.flush_rows, cfg.flush_interval_s
    )
    writer.add(_with_model_columns(scan.bad_rows, spec.describe()))
    shards = None
    if getattr(run.samples, "shards", False):
        shards = shard_committer(run, decision)
    return Plan(run, spec, writer, decision.exclude, todo, shards)


def shard_committer(run: RunState, decision: Decision) -> ShardCommitter:
    """The committer of a run whose output is shards: how many rows of each shard this run
    does, which shards to write (not there yet, or with rows to do) and which to re-pack from
    their output (there, with rows an earlier run finished). One listing of data/."""
    scan, writer = run.scan, run.samples
    of = scan.shard_of
    todo_rows = pc.and_(has_id(scan.ids), pc.invert(pc.is_in(scan.ids, value_set=decision.exclude)))
    counts = pc.value_counts(pc.cast(of.filter(todo_rows), pa.string()))
    todo = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                    strict=True))  # fmt: skip
    present = {shard_of(f"{r}#0")[0] for r in writer.present().to_pylist()}
    done_rows = pc.is_in(scan.ids, value_set=decision.done_ids)
    base = set(pc.unique(pc.cast(of.filter(done_rows), pa.string())).to_pylist()) & present
    write = [n for n in run.source.names if n not in present or todo.get(n)]
    return ShardCommitter(writer, run.source, run.config.extension, todo, base, write)


def _with_model_columns(bad_rows: pa.Table, model: dict) -> pa.Table:
    """The driver's error rows (duplicate or missing ids) name the model like every other row."""
    if bad_rows.num_rows:
        for name, value in model.items():
            bad_rows = bad_rows.append_column(
                name, pa.array([value] * bad_rows.num_rows, pa.string())
            )
    return bad_rows


def check_local_model(cfg: JobConfig) -> None:
    """A model given as a local path ('/…', './…', '~/…') that is not on this machine fails here
    when the run's model actors are on this machine too (a private local Ray instance), instead
    of after Ray started, in every actor. On a cluster the path may exist on the workers only."""
    import os
    from pathlib import Path

    model = cfg.model or ""
    looks_local = model.startswith(("/", "./", "../", "~")) or model.startswith("file://")
    on_this_machine = (
        not cfg.address and not os.environ.get("RAY_ADDRESS") or cfg.address == "local"
    )
    if looks_local and on_this_machine and cfg.backend != "opencv":
        path = Path(os.path.expanduser(model.removeprefix("file://")))
        if not path.exists():
            raise ConfigError(
                f"config field 'model': {model} not found (no such file or folder on this "
                "machine, where the run's model actors would load it); check the path"
            )
    if cfg.backend == "lama" and model and on_this_machine:
        from batch_inpaint.models.lama_weights import check_local_weights

        check_local_weights(model)  # damaged, or refused unpickling: exit 2, before Ray starts
