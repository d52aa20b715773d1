"""The end of a run, on the driver: make the output exact and say whether it is complete.

Compact the metadata to one row per id; keep the rows of ids no longer in the manifest unless
`prune` (then their rows and images go); list the outputs once (the sample writer's: images/, or
data/ for shards): an ok row without its object is a problem, and an object no row points to is
removed only when the writer says a run of this job made it (writers.FilesWriter.owns: the key of
a manifest id in one of the job's formats, or the temp file of such a write cut short; shards:
anything under data/); anything else is left alone and counted. Then the report, `_SUCCESS`
only when every check passes, no row failed for a transient reason and error rows of bad input are
within `max_error_rate` (a breach is a run whose results a pipeline must not consume), and
run.json last, so run.json never says success without `_SUCCESS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver import results
from batch_inpaint.job.driver.scan import ManifestScan
from batch_inpaint.job.io import writers
from batch_inpaint.job.io.output_folder import DATA, IMAGES, MASKS, RUN_JSON, SUCCESS, OutputFolder
from batch_inpaint.job.io.sources import RowSource, open_source
from batch_inpaint.job.report import summary as report
from batch_inpaint.manifest.schema import RESULT_SCHEMA
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

    # Made from `storage` as it is when asked: the LeasedStorage while the lock is held.
    @property
    def folder(self) -> OutputFolder:
        return OutputFolder(self.storage, self.config.output)

    @property
    def samples(self) -> writers.SampleWriter:
        """Where the rows' outputs go, and which exist (job/io/writers.py)."""
        return writers.open_writer(self.config, self.storage)

    @property
    def source(self) -> RowSource:
        """Where the rows come from (job/io/sources.py): the scan's."""
        found = getattr(self.scan, "source", None)
        return found if found is not None else open_source(self.config, self.storage)


def finalize(run: RunState) -> dict:
    """The run's summary (also written to run.json); `success` only when every invariant holds."""
    cfg, storage = run.config, run.storage
    table, parts = results.read_results(storage, cfg.output)
    if table is None:
        table = RESULT_SCHEMA.empty_table()
    in_manifest = pc.is_in(table.column("id"), value_set=run.scan.result_ids)
    rows = table.filter(in_manifest)
    others = table.filter(pc.invert(in_manifest))
    pruned = 0
    if cfg.prune and others.num_rows:
        pruned = _delete_outputs(run.folder, others, rows, run.samples)
        others = others.slice(0, 0)
    row_outputs = _outputs(rows)
    kept = pc.unique(pa.concat_arrays([row_outputs, _outputs(others), _outputs(rows, True),
                                       _outputs(others, True)]))  # fmt: skip
    kept = pa.concat_arrays([kept, _shards_named(rows), _shards_named(others)])
    ids = pa.concat_arrays([run.scan.result_ids, pc.cast(rows.column("id"), pa.string())
                            .combine_chunks()])  # fmt: skip
    samples = run.samples  # the orphan test is the writer's: files and shards differ
    missing, removed, unknown = reconcile_images(samples, kept, samples.owns(ids))
    mine = missing.filter(pc.is_in(missing, value_set=row_outputs))
    mine = mine.take(pc.sort_indices(mine))
    where = DATA if getattr(samples, "shards", False) else IMAGES
    bad_outputs = {u: f"missing: no object under {where}/" for u in mine.slice(0, 21).to_pylist()}
    if table.num_rows:
        compacted = pa.concat_tables([rows, others], promote_options="permissive")
        results.compact(storage, cfg.output, compacted, parts, run.run_id)
    check = results.check_invariants(rows, run.scan.result_ids, bad_outputs, len(mine))
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
        output_format=cfg.output_format,
        success=success,
        problems=check.problems,
        orphans_removed=removed,
        unknown_objects_kept=unknown,
        rows_of_other_manifests_kept=others.num_rows,
        rows_pruned=pruned,
        error_rate=rate,
        residuals=report.residual_summary(rows, cfg.detection.max_residual),
        top_errors=report.top_errors(rows),
        mask_concerns=report.mask_concern_counts(rows),
    )
    report_uri = report.write_report(storage, cfg, rows, summary)
    folder = run.folder
    if success:
        body = {"run_id": run.run_id, "rows": rows.num_rows}
        folder.write(SUCCESS, results.dumps(body))
    elif folder.exists(SUCCESS):  # withdrawn at the start of a run; this is for callers
        folder.delete(SUCCESS)  # of finalize alone
    folder.write(RUN_JSON, results.dumps(summary))
    run.echo(report.summary_text(summary, report_uri))
    return summary


def _shards_named(table: pa.Table) -> pa.Array:
    """A name inside each shard a result row lies in: a shard whose rows are all skipped or
    errors holds no row's output yet is written (the input's bytes), so it is no orphan."""
    if "shard" not in table.column_names or not table.num_rows:
        return pa.array([], pa.string())
    shards = pc.unique(pc.drop_null(pc.cast(table.column("shard"), pa.string())))
    return pc.binary_join_element_wise(f"{DATA}/", shards, "#0", "")


def _outputs(table: pa.Table, kept_by_errors: bool = False) -> pa.Array:
    """Outputs of finished rows (relative, distinct); with kept_by_errors, those of error rows
    that keep theirs (verify's residual rows: kept for review, never removed as orphans, never
    required)."""
    if "output" not in table.column_names or not table.num_rows:
        return pa.array([], pa.string())
    status = table.column("status")
    want = (pc.equal(status, Status.ERROR.value) if kept_by_errors
            else pc.is_in(status, value_set=pa.array(DONE)))  # fmt: skip
    outputs = pc.cast(table.column("output"), pa.string())
    want = pc.and_(want, pc.greater(pc.utf8_length(outputs), 0))
    return pc.unique(results.output_rels(outputs.filter(pc.fill_null(want, False))))


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


def _delete_outputs(folder: OutputFolder, table: pa.Table, kept: pa.Table, writer) -> int:
    """Delete the outputs of pruned rows: the objects that hold them (a shard: the whole shard)
    and hold no kept row's output. Returns how many pruned rows' outputs went."""
    objects = writers.objects_of(writer, _outputs(table))
    keep = writers.objects_of(writer, _outputs(kept))
    gone = pc.unique(objects.filter(pc.invert(pc.is_in(objects, value_set=keep))))
    for rel in gone.to_pylist():
        folder.delete(rel)
    count = pc.sum(pc.cast(pc.is_in(objects, value_set=gone), pa.int64())).as_py() or 0
    # the masks detection saved for those rows (masks/<key>.png: the job's own files)
    if "mask_used" in table.column_names:
        for rel in pc.unique(pc.drop_null(table.column("mask_used"))).to_pylist():
            if rel.startswith(f"{MASKS}/"):
                folder.delete(rel)
    return count


def reconcile_images(
    writer: writers.SampleWriter, keep: pa.Array, ours: Callable[[str], bool]
) -> tuple[pa.Array, int, int]:
    """One listing of the outputs the writer holds (images/ for files): the kept outputs
    (relative) that do not exist (missing); outputs no result row points to are removed when
    `ours(rel)` says a run of this job made them, and otherwise counted and left alone.
    Returns (missing, removed, unknown)."""
    missing, unlisted = writers.missing_and_unlisted(writer, keep)
    removed = unknown = 0
    for uri, rel in unlisted:
        if ours(rel):
            writer.remove(uri)
            removed += 1
        else:
            unknown += 1
    return missing, removed, unknown
