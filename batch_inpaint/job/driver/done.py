"""Which result ids are done, decided on Arrow columns: at millions of rows the driver makes no
Python object per id (docs/architecture.md, "Driver cost at scale"). The one rule that resume,
`results.without_done` and `plan_job` share."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.job.io.output_folder import OutputFolder, output_rels, relative  # noqa: F401 - relative: known here
from batch_inpaint.job.io.writers import FilesWriter, objects_of
from batch_inpaint.vocab import DONE, TRANSIENT_KINDS, Status


def repeated(values) -> pa.Array:
    """The values that appear more than once, each once. By sorting: at 10 M ids a hash count
    (value_counts) held ~0.9 GB, sorting ~0.2 GB, and ids are often near sorted already."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pc.drop_null(values)
    if len(values) < 2:
        return values.slice(0, 0)
    ordered = values.take(pc.sort_indices(values))
    same = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
    return pc.unique(ordered.slice(1).filter(same))


def latest_per_id(table: pa.Table) -> pa.Table:
    """Delivery is at least once: keep one row per id, the last finished (ok beats error when a
    retried task finished both; on a tie the later row). Rows keep their order. Columnar: only
    the rows of ids seen more than once are sorted."""
    ids = table.column("id")
    twice = repeated(ids)
    if not len(twice):
        return table
    dup = pc.fill_null(pc.is_in(ids, value_set=twice), False)
    rows = pc.indices_nonzero(dup)
    sub = pa.table({
        "id": ids.take(rows),
        "done": pc.is_in(table.column("status").take(rows), value_set=pa.array(DONE)),
        "ts": _timestamps(table, rows),
        "row": rows,
    })  # fmt: skip
    order = pc.sort_indices(sub, sort_keys=[("id", "ascending"), ("done", "descending"),
                                            ("ts", "descending"), ("row", "descending")])  # fmt: skip
    sorted_ids = sub.column("id").take(order)
    first = pc.not_equal(sorted_ids.slice(1), sorted_ids.slice(0, len(sorted_ids) - 1))
    first = pa.concat_arrays([pa.array([True]), pc.fill_null(first, True).combine_chunks()])
    best = sub.column("row").take(order).filter(first)
    keep = pc.invert(dup).to_numpy(zero_copy_only=False).copy()
    keep[best.to_numpy()] = True
    return table.filter(pa.array(keep))


def _timestamps(table: pa.Table, rows) -> pa.Array:
    """finished_at as float seconds (0 for none) for `rows`."""
    if "finished_at" not in table.column_names:
        return pa.array([0.0] * len(rows))
    ts = table.column("finished_at").take(rows)
    if pa.types.is_timestamp(ts.type):
        ts = pc.cast(pc.cast(ts, pa.timestamp("us", tz=ts.type.tz)), pa.int64())
    return pc.fill_null(pc.cast(ts, pa.float64()), 0.0)


def finished_ids(
    storage, output: str, retry_errors: bool, table: pa.Table | None, writer=None
) -> pa.Array:
    """Ids an earlier run finished, from its results `table`: ok and skipped rows whose output
    still exists (a deleted output is made again), and error rows of bad input unless
    retry_errors. Rows that failed for a transient reason (storage, memory) are always redone.
    Which outputs exist is the sample writer's answer (job/io/writers.py; `writer` None: the files
    writer over `output`). An Arrow array: at millions of rows no Python object per id is made."""
    if table is None or not table.num_rows:
        return pa.array([], pa.string())
    status = table.column("status")
    done = pc.is_in(status, value_set=pa.array(DONE))
    if pc.any(done).as_py():
        if "output" in table.column_names:
            writer = writer or FilesWriter(OutputFolder(storage, output))
            held = objects_of(writer, output_rels(table.column("output")))  # a shard holds many
            there = pc.is_in(held, value_set=writer.present())
            done = pc.and_(done, pc.fill_null(there, False))
        else:
            done = pc.and_(done, pa.array([False] * table.num_rows))
    if not retry_errors:
        error = pc.equal(status, Status.ERROR.value)
        if "error_kind" in table.column_names:
            kinds = pc.is_in(
                table.column("error_kind"), value_set=pa.array(sorted(TRANSIENT_KINDS))
            )
            error = pc.and_(error, pc.invert(pc.fill_null(kinds, False)))
        done = pc.or_(done, error)
    ids = pc.cast(table.column("id"), pa.string()).filter(pc.fill_null(done, False))
    return ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids


def done_ids(storage, output: str, retry_errors: bool, table: pa.Table | None) -> set[str]:
    """finished_ids as a set, for callers with few rows."""
    return set(finished_ids(storage, output, retry_errors, table).to_pylist())


def list_images(storage, output: str) -> pa.Array:
    """Every object under output/images, as paths relative to the output ('images/...'): the
    files writer's answer to "which outputs exist"."""
    return FilesWriter(OutputFolder(storage, output)).present()
