"""The end of a run, on the driver: make the output exact and say whether it is complete.

Compact the metadata to one row per id; keep the rows of ids no longer in the manifest unless
`prune` (then their rows and images go); list images/ once: an ok row without its object is a
problem, and an object no row points to is removed only when a run of this job made it (the key of
a manifest id in one of the job's formats, e.g. after a change of output format); anything else is
left alone and counted. Then the report, `_SUCCESS` only when every check passes, no row failed
for a transient reason and error rows of bad input are within `max_error_rate` (a breach is a run
whose results a pipeline must not consume), and run.json last, so run.json never says success
without `_SUCCESS`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import EXTENSIONS, JobConfig
from batch_inpaint.errors import NotFoundError
from batch_inpaint.job import report, results
from batch_inpaint.job.scan import ManifestScan
from batch_inpaint.manifest.schema import RESULT_SCHEMA
from batch_inpaint.storage.uri import HASH_CHARS, join, output_key, same_location
from batch_inpaint.vocab import DONE, TRANSIENT_KINDS, Status


@dataclass
class RunState:
    """What the driver knows of a run when its rows are through."""

    config: JobConfig
    storage: object  # batch_inpaint.storage.store.Storage
    scan: ManifestScan
    run_id: str
    started: float  # time.time() at the start of the run
    processed: int = 0  # rows this run took through the stages
    echo: Callable[[str], object] = print


def finalize(run: RunState) -> dict:
    """The run's summary (also written to run.json); `success` only when every invariant holds."""
    cfg, storage = run.config, run.storage
    table, parts = results.read_results(storage, cfg.output)
    if table is None:
        table = RESULT_SCHEMA.empty_table()
    in_manifest = pc.is_in(table.column("id"), value_set=pa.array(run.scan.result_ids, pa.string()))
    rows = table.filter(in_manifest)
    others = table.filter(pc.invert(in_manifest))
    pruned = 0
    if cfg.prune and others.num_rows:
        pruned = _delete_outputs(storage, cfg.output, others)
        others = others.slice(0, 0)
    row_outputs = _outputs(rows)
    kept = row_outputs | _outputs(others)
    missing, removed, unknown = reconcile_images(storage, cfg.output, kept, _own_keys(run, rows))
    mine = missing & row_outputs
    bad_outputs = {u: "missing: no object under images/" for u in sorted(mine)}
    if table.num_rows:
        compacted = pa.concat_tables([rows, others], promote_options="permissive")
        results.compact(storage, cfg.output, compacted, parts, run.run_id)
    check = results.check_invariants(rows, run.scan.result_ids, bad_outputs)
    transient = _transient_errors(rows)
    if transient:
        check.problems.append(
            f"{transient} row(s) failed for a transient reason (storage or memory); they are "
            "redone by the next run: rerun to finish"
        )
    rate = error_rate(rows, len(run.scan.result_ids), cfg.max_error_rate)
    if rate["exceeded"]:
        check.problems.append(
            f"{rate['bad_input']:.1%} of the manifest's rows are errors of bad input, more than "
            f"max_error_rate {cfg.max_error_rate:g}: fix the rows (see errors_by_kind and the "
            "report), then rerun with --retry-errors"
        )
    success = check.ok and not transient and not rate["exceeded"]
    summary = results.summarize(rows, run.started, time.time(), run.processed)
    summary.update(
        run_id=run.run_id,
        output=cfg.output,
        success=success,
        problems=check.problems,
        orphans_removed=removed,
        unknown_objects_kept=unknown,
        rows_of_other_manifests_kept=others.num_rows,
        rows_pruned=pruned,
        error_rate=rate,
    )
    report_uri = report.write_report(storage, cfg, rows, summary)
    success_uri = join(cfg.output, "_SUCCESS")
    if success:
        body = {"run_id": run.run_id, "rows": rows.num_rows}
        storage.write_bytes(success_uri, results.dumps(body), root=cfg.output)
    elif storage.exists(success_uri):  # withdrawn at the start of a run; this is for callers
        storage.delete(success_uri, root=cfg.output)  # of finalize alone
    storage.write_bytes(join(cfg.output, "run.json"), results.dumps(summary), root=cfg.output)
    run.echo(report.summary_text(summary, report_uri))
    return summary


def _outputs(table: pa.Table) -> set[str]:
    if "output" not in table.column_names:
        return set()
    pairs = zip(table.column("output").to_pylist(), table.column("status").to_pylist(), strict=True)
    return {results.output_rel(o) for o, s in pairs if s in DONE and o}


def error_rate(rows: pa.Table, manifest_rows: int, limit: float | None) -> dict:
    """Error rows over the manifest's rows, bad input and transient apart; `exceeded` when bad
    input is above `limit`. Judged once every row is through (not part-way), so the figure is
    exact and does not depend on which rows happened to come first."""
    transient = _transient_errors(rows)
    errors = _errors(rows)
    n = max(manifest_rows, 1)
    bad = (errors - transient) / n
    exceeded = limit is not None and bad > limit
    return {"bad_input": round(bad, 6), "transient": round(transient / n, 6),
            "max": limit, "exceeded": exceeded}  # fmt: skip


def _errors(rows: pa.Table) -> int:
    return pc.sum(pc.equal(rows.column("status"), Status.ERROR.value)).as_py() or 0


def _transient_errors(rows: pa.Table) -> int:
    if "error_kind" not in rows.column_names:
        return 0
    kinds = pc.is_in(rows.column("error_kind"), value_set=pa.array(sorted(TRANSIENT_KINDS)))
    errors = pc.equal(rows.column("status"), Status.ERROR.value)
    return pc.sum(pc.and_(kinds, errors)).as_py() or 0


def _own_keys(run: RunState, rows: pa.Table) -> Callable[[str], bool]:
    """A test for 'a run of this job wrote this object': it is the image key of a manifest id
    (or of a row in the results) in one of the job's output formats."""
    ids = set(run.scan.result_ids) | set(rows.column("id").to_pylist())
    by_hash: dict[str, str] | None = None

    def ours(rel: str) -> bool:
        nonlocal by_hash
        name = rel.removeprefix("images/")
        stem, dot, ext = name.rpartition(".")
        if not dot or ext not in EXTENSIONS.values():
            return False
        if "~" in stem:  # a sanitised key ends in '~' + the id's hash: look the id up by it
            if by_hash is None:
                by_hash = {hashlib.sha256(i.encode("utf-8", "surrogatepass")).hexdigest()
                           [:HASH_CHARS]: i for i in ids}  # fmt: skip
            rid = by_hash.get(stem.rsplit("~", 1)[-1])
        else:
            rid = stem if stem in ids else None
        return rid is not None and output_key(rid, "." + ext) == name

    return ours


def _delete_outputs(storage, output: str, table: pa.Table) -> int:
    count = 0
    for rel in _outputs(table):
        storage.delete(join(output, rel), root=output)
        count += 1
    return count


def reconcile_images(
    storage, output: str, keep: set[str], ours: Callable[[str], bool]
) -> tuple[set[str], int, int]:
    """One listing of images/: the kept outputs (relative) that have no object (missing); objects
    no result row points to are removed when `ours(rel)` says a run of this job made them, and
    otherwise counted and left alone. Returns (missing, removed, unknown)."""
    try:
        found = storage.list(join(output, "images"))
    except NotFoundError:
        found = []
    root = same_location(output).rstrip("/") + "/"
    seen: set[str] = set()
    removed = unknown = 0
    for uri in found:
        rel = same_location(uri)[len(root) :]
        if rel in keep:
            seen.add(rel)
        elif ours(rel):
            storage.delete(uri, root=output)
            removed += 1
        else:
            unknown += 1
    return keep - seen, removed, unknown
