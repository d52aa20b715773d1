"""Result metadata on storage: written in parts as rows finish, read back for resume, compacted to one
row per id at the end, and checked before `_SUCCESS` is written.

Layout under the output URI::

    images/<key>.<ext>        one object per ok/skipped row (key from storage.output_key)
    metadata/*.parquet        result rows; after finalize exactly one per manifest row
    job.json  run.json  report.html  _SUCCESS
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_inpaint.errors import InpaintError, ManifestError
from batch_inpaint.storage.uri import join, same_location

DONE = ("ok", "skipped")


class MetadataWriter:
    """Buffers result rows and writes them as Parquet parts, each written atomically, so a driver
    killed mid-run loses at most the rows of its last unwritten part (which a rerun redoes)."""

    def __init__(self, storage, output: str, run_id: str, flush_rows: int, flush_s: float):
        self.storage, self.output, self.run_id = storage, output, run_id
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.seq = 0
        self.last_flush = time.monotonic()
        self.parts: list[str] = []

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.buffer.append(table)
            self.buffered += table.num_rows
        if self.buffered >= self.flush_rows or time.monotonic() - self.last_flush > self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer, promote_options="permissive")
        uri = join(self.output, "metadata", f"part-{self.run_id}-{self.seq:05d}.parquet")
        self.storage.write_bytes(uri, table_bytes(table))
        self.parts.append(uri)
        self.seq += 1
        self.buffer, self.buffered = [], 0


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_results(
    storage, output: str, strict: bool = False
) -> tuple[pa.Table | None, list[str], list[str]]:
    """All result rows under output/metadata (latest row per id), the part URIs read, and the
    parts that could not be read (a part half-written by a killed run: its rows get redone;
    strict=True raises ManifestError instead). Hidden ('.x') and '_x' files and folders are
    unfinished writes, not data."""
    prefix = join(output, "metadata")
    try:
        found = storage.list(prefix)
    except Exception:  # noqa: BLE001 - no metadata folder yet: nothing done
        return None, [], []
    uris = [u for u in found if u.endswith(".parquet") and _is_data(u.rsplit("/metadata/", 1)[-1])]
    tables, bad = [], []
    for uri in sorted(uris):
        try:
            tables.append(pq.read_table(io.BytesIO(storage.read_bytes(uri))))
        except Exception as exc:  # noqa: BLE001
            if strict:
                raise ManifestError(f"results file {uri} can't be read: {exc}") from None
            bad.append(uri)
    if not tables:
        return None, uris, bad
    table = pa.concat_tables(tables, promote_options="permissive")
    return latest_per_id(table), uris, bad


def _is_data(rel: str) -> bool:
    return not any(part.startswith((".", "_")) for part in rel.strip("/").split("/"))


def latest_per_id(table: pa.Table) -> pa.Table:
    """Delivery is at least once: keep one row per id, the last finished (ok beats error when a
    retried task finished both)."""
    ids = table.column("id").to_pylist()
    status = table.column("status").to_pylist()
    n = table.num_rows
    finished = (
        table.column("finished_at").to_pylist()
        if "finished_at" in table.column_names
        else [None] * n
    )
    best: dict[str, int] = {}
    for i, rid in enumerate(ids):
        j = best.get(rid)
        if j is None or (status[i] in DONE, _ts(finished[i])) >= (
            status[j] in DONE,
            _ts(finished[j]),
        ):
            best[rid] = i
    return table.take(sorted(best.values()))


def _ts(value) -> float:
    """Seconds of a finished_at value; results written before it was a timestamp may hold text."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        import datetime as dt

        try:
            return dt.datetime.fromisoformat(value).timestamp()
        except ValueError:
            return 0.0
    return value.timestamp()


def done_ids(
    storage, output: str, retry_errors: bool, strict: bool = False, check_outputs: bool = False
) -> set[str]:
    """Ids an earlier run finished: ok and skipped rows, and error rows unless retry_errors.
    check_outputs=True (the job's resume) also lists images/ and redoes an ok or skipped row
    whose object is gone, so a deleted output is made again instead of failing the invariants."""
    table, _, _ = read_results(storage, output, strict=strict)
    if table is None:
        return set()
    keep = DONE if retry_errors else (*DONE, "error")
    ids = table.column("id").to_pylist()
    status = table.column("status").to_pylist()
    outputs = (
        table.column("output").to_pylist() if "output" in table.column_names else [None] * len(ids)
    )
    present = list_images(storage, output) if check_outputs else None
    return {
        r
        for r, s, o in zip(ids, status, outputs, strict=True)
        if s in keep and (present is None or s not in DONE or same_location(o or "") in present)
    }


def list_images(storage, output: str) -> set[str]:
    """Normalised URIs of every object under output/images (empty if there is none yet)."""
    try:
        return {same_location(u) for u in storage.list(join(output, "images"))}
    except InpaintError:
        return set()


def compact(storage, output: str, table: pa.Table, old_parts: list[str], run_id: str) -> str:
    """One Parquet file with one row per id replaces the parts (written first, then the parts
    deleted: a crash in between leaves duplicates that the next read dedupes)."""
    uri = join(output, "metadata", f"results-{run_id}.parquet")
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
    table: pa.Table, manifest_ids: list[str], verified_outputs: dict[str, str]
) -> Check:
    """ok + error + skipped == manifest rows; ids unique; every ok row's object exists (and was
    checked to decode when written); `verified_outputs` maps output URI -> problem, for those
    that failed the check."""
    problems = []
    ids = table.column("id").to_pylist()
    counts = Counter(ids)
    dups = [i for i, n in counts.items() if n > 1]
    if dups:
        problems.append(f"{len(dups)} id(s) appear more than once in the results, e.g. {dups[:3]}")
    expected = Counter(manifest_ids)
    missing = [i for i in expected if i not in counts]
    extra = [i for i in counts if i not in expected]
    if missing:
        problems.append(f"{len(missing)} manifest row(s) have no result, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} result row(s) are not in the manifest, e.g. {extra[:3]}")
    status = Counter(table.column("status").to_pylist())
    if sum(status.values()) != len(manifest_ids):
        problems.append(
            f"ok + error + skipped = {sum(status.values())} but the manifest has {len(manifest_ids)} rows"
        )
    for uri, why in list(verified_outputs.items())[:20]:
        problems.append(f"output {uri}: {why}")
    if len(verified_outputs) > 20:
        problems.append(f"... and {len(verified_outputs) - 20} more bad outputs")
    return Check(ok=not problems, problems=problems)


def summarize(table: pa.Table, started: float, ended: float, this_run_rows: int) -> dict:
    status = Counter(table.column("status").to_pylist())
    kinds = Counter(
        k
        for k, s in zip(
            table.column("error_kind").to_pylist(), table.column("status").to_pylist(), strict=True
        )
        if s == "error"
    )
    secs = {
        c: float(pc.sum(table.column(c)).as_py() or 0.0)
        for c in ("prepare_s", "model_s", "write_s")
    }
    wall = max(ended - started, 1e-9)
    return {
        "rows": table.num_rows,
        "counts": {s: status.get(s, 0) for s in ("ok", "error", "skipped")},
        "errors_by_kind": dict(sorted(kinds.items())),
        "rows_this_run": this_run_rows,
        "wall_s": round(wall, 3),
        "rows_per_s": round(this_run_rows / wall, 3),
        "stage_seconds_total": {k: round(v, 3) for k, v in secs.items()},
    }


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
