"""Result metadata on storage: written in parts as rows finish, read back for resume, compacted to one
row per id at the end, and checked before `_SUCCESS` is written.

Layout under the output URI (its names: job/io/output_folder.py)::

    images/<key>.<ext>        one object per ok/skipped row (key from storage.output_key)
    metadata/*.parquet        result rows; after finalize exactly one per manifest row
    job.json                  the config and versions (job_json)
    run.json  report.html  _SUCCESS   written by finalize
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_inpaint.errors import InpaintError, ManifestError, NotFoundError, TransientStorageError
from batch_inpaint.job.driver.done import (  # noqa: F401 - the names callers know from here
    done_ids,
    finished_ids,
    latest_per_id,
    list_images,
    relative,
    repeated,
)
from batch_inpaint.job.io.output_folder import (  # noqa: F401 - output_rel(s) known here
    METADATA,
    SUCCESS,
    OutputFolder,
    output_rel,
    output_rels,
)
from batch_inpaint.storage.uri import redact_uri
from batch_inpaint.vocab import Status

if TYPE_CHECKING:
    from batch_inpaint.manifest.manifest import Manifest


class MetadataWriter:
    """Buffers result rows and writes them as Parquet parts, each written atomically, so a driver
    killed mid-run loses at most the rows of its last unwritten part (which a rerun redoes).

    A part that can't be written for a transient reason (a full disk, storage down past the
    retries) keeps its rows in memory and the run goes on: the next flush writes them all. The
    final flush (`flush()` at the end) raises TransientStorageError, saying how many rows it
    could not write, so the run stops cleanly and a rerun redoes them."""

    def __init__(self, storage, output: str, run_id: str, flush_rows: int, flush_s: float):
        self.storage, self.output, self.run_id = storage, output, run_id
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.seq = 0
        self.last_flush = time.monotonic()
        self.parts: list[str] = []

    def add(self, table: pa.Table) -> None:
        lease = getattr(self.storage, "lease", None)  # job/lock.LeasedStorage: the driver's
        if lease is not None:
            lease.check()  # a run that lost its lock stops at its next batch, not its next part
        if table.num_rows:
            self.buffer.append(table)
            self.buffered += table.num_rows
        if self.buffered >= self.flush_rows or time.monotonic() - self.last_flush > self.flush_s:
            # the rows stay buffered on a transient failure; the next flush tries them again
            with contextlib.suppress(TransientStorageError):
                self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer, promote_options="permissive")
        folder = OutputFolder(self.storage, self.output)
        uri = folder.uri(METADATA, f"part-{self.run_id}-{self.seq:05d}.parquet")
        try:
            self.storage.write_bytes(uri, table_bytes(table), root=self.output)
        except TransientStorageError as exc:
            raise TransientStorageError(
                f"the run stopped: {table.num_rows} result row(s) could not be written to "
                f"{redact_uri(folder.metadata)} ({exc}). Nothing was lost that a "
                "rerun can't redo: rerun once the storage is back (or has room) to finish"
            ) from exc
        self.parts.append(uri)
        self.seq += 1
        self.buffer, self.buffered = [], 0


def without_done(manifest: Manifest, results_uri: str, retry_errors: bool = False) -> Manifest:
    """The manifest's rows that an earlier run into `results_uri` did not finish, judged by the
    {results_uri}/metadata/*.parquet result rows the job writes (the same rule as the job's
    resume): ok and skipped rows whose image is there are done; error rows are done unless
    retry_errors=True or they failed for a transient reason. No results yet: every row. A
    results file that can't be read raises (and is moved aside, never deleted)."""
    table, _ = read_results(manifest.storage, results_uri, PLAN_COLUMNS)
    return manifest.exclude(finished_ids(manifest.storage, results_uri, retry_errors, table))


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_results(
    storage, output: str, columns: list[str] | None = None, *, dry_run: bool = False
) -> tuple[pa.Table | None, list[str]]:
    """All result rows under output/metadata (latest row per id) and the part URIs read;
    `columns`: only these (those a part has), e.g. what planning a resume needs.

    Only "not found" means nothing was done yet. A listing or read that fails otherwise (access
    denied, storage down) raises with the prefix and the cause, so no run recomputes what it
    merely could not see. A part that can't be decoded is damaged: it is moved aside to
    metadata/_damaged/ (never deleted) and the run stops with a ResultsDamagedError naming both.
    dry_run (`run --dry-run` writes nothing): damaged parts stay where they are and the second
    value is their (redacted) URIs instead, for the plan to name.
    Hidden ('.x') and '_x' files and folders are unfinished writes or set aside, not data."""
    folder = OutputFolder(storage, output)
    prefix = folder.metadata
    try:
        found = storage.list(prefix)
    except NotFoundError:
        return None, []
    except InpaintError as exc:
        raise type(exc)(
            f"can't tell what earlier runs into {redact_uri(output)} finished: listing "
            f"{redact_uri(prefix)} failed: {exc}",
            kind=exc.kind,
        ) from None
    uris = [u for u in found if u.endswith(".parquet") and _is_data(u.rsplit("/metadata/", 1)[-1])]
    tables, damaged = [], []
    for uri in sorted(uris):
        data = storage.read_bytes(uri)  # a failing read raises: the run stops before model work
        try:
            tables.append(_read_part(data, columns))
        except (pa.ArrowException, OSError, ValueError) as exc:
            if dry_run:
                damaged.append((uri, None, exc))
                continue
            damaged.append((uri, set_aside(storage, output, uri, data), exc))
    if dry_run:
        named = [redact_uri(u) for u, _, _ in damaged]
        return (latest_per_id(pa.concat_tables(tables, promote_options="permissive"))
                if tables else None), named  # fmt: skip
    if damaged:
        if folder.exists(SUCCESS):  # rows went aside: the output is no longer complete
            folder.delete(SUCCESS)
        lines = "; ".join(f"{redact_uri(u)} ({e}) moved to {redact_uri(m)}" for u, m, e in damaged)
        raise ResultsDamagedError(
            f"{len(damaged)} results file(s) under {redact_uri(prefix)} can't be read: {lines}. "
            "Nothing was deleted. Rerun to redo the rows they held (resume can't tell which), or "
            "put a repaired file back"
        )
    if not tables:
        return None, uris
    table = pa.concat_tables(tables, promote_options="permissive")
    return latest_per_id(table), uris


def _read_part(data: bytes, columns: list[str] | None) -> pa.Table:
    if columns is None:
        return pq.read_table(io.BytesIO(data))
    part = pq.ParquetFile(io.BytesIO(data))
    return part.read(columns=[c for c in columns if c in part.schema_arrow.names])


# What deciding which rows are done reads of the results (planning a resume).
PLAN_COLUMNS = ["id", "status", "error_kind", "output", "finished_at"]


class ResultsDamagedError(ManifestError):
    """A results file that can't be decoded; it was moved aside, not deleted."""


def set_aside(storage, output: str, uri: str, data: bytes) -> str:
    """Copy a damaged results file to metadata/_damaged/ (a name readers skip), then remove it."""
    name = uri.rsplit("/", 1)[-1]
    folder = OutputFolder(storage, output)
    target = folder.uri(METADATA, "_damaged", f"{new_run_id()}-{name}")
    storage.write_bytes(target, data, root=output)
    folder.delete_uri(uri)
    return target


def _is_data(rel: str) -> bool:
    return not any(part.startswith((".", "_")) for part in rel.strip("/").split("/"))


def compact(storage, output: str, table: pa.Table, old_parts: list[str], run_id: str) -> str:
    """One Parquet file with one row per id replaces the parts (written first, then the parts
    deleted: a crash in between leaves duplicates that the next read dedupes)."""
    uri = OutputFolder(storage, output).uri(METADATA, f"results-{run_id}.parquet")
    storage.write_bytes(uri, table_bytes(table))
    for old in old_parts:
        if old != uri:
            storage.delete(old)
    return uri


@dataclass
class Check:
    ok: bool
    problems: list[str] = field(default_factory=list)


def check_invariants(
    table: pa.Table, manifest_ids, verified_outputs: dict[str, str], bad_count: int | None = None
) -> Check:
    """ok + error + skipped == manifest rows; ids unique; every ok row's object exists (and was
    checked to decode when written); `verified_outputs` maps output URI -> problem, for those
    that failed the check (the first few of `bad_count`). Columnar: ids are never Python sets."""
    problems = []
    ids = pc.cast(table.column("id"), pa.string())
    expected = manifest_ids if isinstance(manifest_ids, (pa.Array, pa.ChunkedArray)) else (
        pa.array(list(manifest_ids), pa.string()))  # fmt: skip
    dups = repeated(ids)
    if len(dups):
        problems.append(f"{len(dups)} id(s) appear more than once in the results, e.g. "
                        f"{dups.slice(0, 3).to_pylist()}")  # fmt: skip
    found = pc.unique(ids)
    wanted = pc.unique(expected)
    missing = wanted.filter(pc.invert(pc.is_in(wanted, value_set=found)))
    extra = found.filter(pc.invert(pc.is_in(found, value_set=expected)))
    if len(missing):
        problems.append(f"{len(missing)} manifest row(s) have no result, e.g. "
                        f"{missing.slice(0, 3).to_pylist()}")  # fmt: skip
    if len(extra):
        problems.append(f"{len(extra)} result row(s) are not in the manifest, e.g. "
                        f"{extra.slice(0, 3).to_pylist()}")  # fmt: skip
    if table.num_rows != len(expected):
        problems.append(
            f"ok + error + skipped = {table.num_rows} but the manifest has {len(expected)} rows"
        )
    bad = len(verified_outputs) if bad_count is None else bad_count
    for uri, why in list(verified_outputs.items())[:20]:
        problems.append(f"output {uri}: {why}")
    if bad > 20:
        problems.append(f"... and {bad - 20} more bad outputs")
    return Check(ok=not problems, problems=problems)


def _counts(column) -> dict:
    counts = pc.value_counts(column)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                    strict=True))  # fmt: skip


def summarize(table: pa.Table, started: float, ended: float, this_run_rows: int) -> dict:
    status = _counts(table.column("status"))
    errors = pc.equal(table.column("status"), Status.ERROR.value)
    kinds = _counts(table.column("error_kind").filter(pc.fill_null(errors, False)))
    secs = {
        c: float(pc.sum(table.column(c)).as_py() or 0.0)
        for c in ("detect_s", "prepare_s", "model_s", "write_s", "verify_s")
        if c in table.column_names
    }
    wall = max(ended - started, 1e-9)
    return {
        "rows": table.num_rows,
        "counts": {
            s.value: status.get(s.value, 0) for s in (Status.OK, Status.ERROR, Status.SKIPPED)
        },
        "errors_by_kind": dict(sorted(kinds.items(), key=lambda kv: str(kv[0]))),
        "rows_this_run": this_run_rows,
        "wall_s": round(wall, 3),
        "rows_per_s": round(this_run_rows / wall, 3),
        "stage_seconds_total": {k: round(v, 3) for k, v in secs.items()},
    }


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def job_json(cfg, run_id: str) -> dict:
    """job.json: the config (no secret ever enters it) and the versions that made the outputs."""
    import platform

    from batch_inpaint import __version__

    versions = {"batch_inpaint": __version__, "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("torch", "diffusers", "ray", "transformers", "pyarrow", "spandrel"):
        try:  # from the installed metadata: importing torch/diffusers/ray here would cost seconds
            versions[mod] = version(mod)
        except PackageNotFoundError:  # a missing optional package is recorded as None
            versions[mod] = None
    config = cfg.to_dict()
    for name in ("manifest", "output", "model", "endpoint_url", "address"):
        if config.get(name):  # user:password@ and presigned signatures stay out of outputs
            config[name] = redact_uri(config[name])
    return {
        "run_id": run_id,
        "config": config,
        "versions": versions,
        "storage": cfg.storage_options().to_public_dict(),
    }
