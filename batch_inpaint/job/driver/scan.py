"""What the driver learns from a manifest before any cluster work: its schema is checked and its id
column read (cheap even for millions of rows). Rows that can't be processed (an id used twice, or
no id) get their error rows here and never reach the cluster; every manifest row gets one unique
result id."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError, InpaintError, NotFoundError
from batch_inpaint.job.driver.done import repeated
from batch_inpaint.job.driver.guard import input_locations
from batch_inpaint.job.io.sources import RowSource, check_parts, open_source  # noqa: F401
from batch_inpaint.job.stages.finish import redact_columns
from batch_inpaint.manifest.ids import collision_note, generated_ids
from batch_inpaint.manifest.schema import RESULT_SCHEMA
from batch_inpaint.storage.store import Storage, access_error
from batch_inpaint.storage.uri import redact_uri
from batch_inpaint.vocab import ErrorKind, Status


class ManifestScan:
    """What the driver learns from the id column: row ids, the ids that can't be processed
    (duplicated, null or empty), their error rows, and one result id per manifest row. Ids are
    Arrow arrays, never Python objects per row: 10 M ids take ~0.2 GB (docs/architecture.md)."""

    def __init__(self, ids, bad_rows: pa.Table, base: str, inputs: list[str] = ()):
        self.ids = _strings(ids)
        self.bad_rows, self.base = bad_rows, base
        self.inputs = list(inputs)  # what the manifest reads: itself, its image and mask folders
        self.source: RowSource | None = None  # where the rows come from (scan_manifest sets it)
        self.shard_of: pa.Array | None = None  # shards: each row's shard, by name (dictionary)
        self.duplicates = duplicate_ids(self.ids)  # ids used more than once, each once
        self.result_ids = result_ids(self.ids, self.duplicates)

    def __len__(self) -> int:
        return len(self.ids)


def _strings(ids) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if not isinstance(ids, pa.Array):
        return pa.array(list(ids), pa.string())
    return ids if ids.type == pa.string() else pc.cast(ids, pa.string())


def has_id(ids) -> pa.Array:
    """True where a row has an id (not null, not empty)."""
    return pc.fill_null(pc.greater(pc.utf8_length(ids), 0), False)


def duplicate_ids(ids) -> pa.Array:
    """The non-empty ids that appear more than once."""
    ids = _strings(ids)
    if not len(ids):
        return pa.array([], pa.string())
    return repeated(ids.filter(has_id(ids)))


def result_ids(ids, duplicates: pa.Array | None = None):
    """One unique result id per manifest row: the id itself; 'id#2', 'id#3', ... for later
    occurrences of a duplicated id; '#row-N' for a row with no id (N counts from 0); '#' appended
    while such an id is another row's (manifest/ids.py). A list in, a list out; an Arrow array
    in, an array out (only the bad rows are touched in Python)."""
    as_list = not isinstance(ids, (pa.Array, pa.ChunkedArray))
    ids = _strings(ids)
    bad = _bad_mask(ids, duplicate_ids(ids) if duplicates is None else duplicates)
    out = pc.fill_null(ids, "")
    if pc.any(bad).as_py():
        positions, named = bad_positions(ids, bad)
        made = generated_ids(positions, named, _taken_in(ids))
        out = pc.replace_with_mask(out, bad, pa.array(made, pa.string()))
    return out.to_pylist() if as_list else out


def _bad_mask(ids: pa.Array, duplicates: pa.Array) -> pa.Array:
    missing = pc.invert(has_id(ids))
    if not len(duplicates):
        return missing
    return pc.or_(missing, pc.fill_null(pc.is_in(ids, value_set=duplicates), False))


def bad_positions(ids: pa.Array, bad: pa.Array) -> tuple[list[int], list[str | None]]:
    """Row numbers and ids (None for no id) of the rows marked in `bad`, in manifest order."""
    positions = pc.indices_nonzero(bad)
    named = [i or None for i in ids.take(positions).to_pylist()]
    return positions.to_pylist(), named


def _taken_in(ids: pa.Array):
    """Which of a few candidate ids are among `ids`: one pass over the ids per call."""

    def taken(candidates: list[str]) -> set[str]:
        hit = pc.fill_null(pc.is_in(ids, value_set=pa.array(candidates, pa.string())), False)
        return set(pc.unique(ids.filter(hit)).to_pylist())

    return taken


def scan_manifest(
    storage: Storage, cfg: JobConfig, source: RowSource | None = None
) -> ManifestScan:
    """Check the manifest's schema and ids on the driver before any cluster work. Rows that can't
    be processed become error rows here and never reach the cluster: every row of an id that
    appears twice (we can't know which one was meant; ids name the output objects and drive
    resume), and rows with a null or empty id. The id column is read in batches, and of the
    image and mask URIs only their distinct folders are kept. `source`: where the rows come
    from (job/io/sources.py; by default the config's manifest); the scan keeps it."""
    source = source if source is not None else open_source(cfg, storage)
    where = f"manifest {redact_uri(source.uri)}"
    chunks, folders, shards = [], [], []
    try:
        source.check(where, needs_mask=not cfg.detection.detect)
        names = [c for c in ("id", "image", "mask") if c in source.schema().names]
        sharded = "shard" in source.schema().names  # shards: the committer counts by shard
        for batch in source.batches(names + ["shard"] * sharded):
            chunks.append(pc.cast(batch.column("id"), pa.string()))
            if sharded:
                shards.append(pc.dictionary_encode(batch.column("shard")))
            folders += [_folders(batch.column(c)) for c in names[1:]]
    except InpaintError:
        raise
    except (OSError, pa.ArrowInvalid) as exc:
        missing = access_error(source.uri, exc, "reading the manifest", cfg.profile)
        if isinstance(missing, NotFoundError):
            raise ConfigError(f"{missing}; check the path (or build a manifest with "
                              "`batch-inpaint manifest build`)") from None  # fmt: skip
        if missing is not None:
            raise ConfigError(str(missing)) from None
        raise ConfigError(f"cannot read {where}: {exc}") from None
    scan = ManifestScan(pa.chunked_array(chunks, pa.string()), pa.table({}), "", [])
    scan.source = source
    if shards:
        scan.shard_of = pa.chunked_array(shards).combine_chunks()
    bad = _bad_mask(scan.ids, scan.duplicates)
    if pc.any(bad).as_py():
        positions, named = bad_positions(scan.ids, bad)
        made = scan.result_ids.take(pa.array(positions, pa.int64())).to_pylist()
        scan.bad_rows = _unusable_rows(source, positions, named, made)
    scan.base = source.base
    uris = pa.chunked_array(folders, pa.string())
    scan.inputs = input_locations(source.uri, scan.base, uris)
    return scan


def _folders(column) -> pa.Array:
    """A URI column reduced to one URI per distinct folder ('dir/_' for every 'dir/x'; a bare
    file name stays as it is): what input_locations needs, without a string per row."""
    uris = pc.drop_null(pc.cast(column, pa.string()))
    return pc.unique(pc.replace_substring_regex(uris, r"/[^/]*$", "/_"))


def _unusable_rows(
    source: RowSource, positions: list[int], named: list[str | None], made: list[str]
) -> pa.Table:
    """Error rows (with their pass-through columns) for duplicated ids and rows without an id;
    `positions`, `named` and `made` are those rows' numbers, ids and result ids, in order."""
    import datetime as dt

    rows_of: dict[str | None, list[int]] = {}
    for n, i in zip(positions, named, strict=True):
        rows_of.setdefault(i, []).append(n)
    result_at = dict(zip(positions, made, strict=True))
    ids = sorted(i for i in rows_of if i is not None)
    where = pc.field("id").isin(ids) if ids else None
    if None in rows_of:
        no_id = pc.field("id").is_null() | (pc.field("id") == "")
        where = no_id if where is None else (where | no_id)
    table = redact_columns(source.rows_where(where))
    # The filter keeps file order, so the k-th row of an id here is its k-th position overall.
    taken: dict[str | None, int] = {}
    out_ids, msgs, kinds = [], [], []
    for i in pc.cast(table.column("id"), pa.string()).to_pylist():
        key = i or None
        k = taken.get(key, 0)
        taken[key] = k + 1
        pos = rows_of[key][k]
        out_ids.append(result_at[pos])
        kinds.append((ErrorKind.MISSING_ID if key is None else ErrorKind.DUPLICATE_ID).value)
        if key is None:
            msgs.append(
                f"manifest row {pos} has no id (null or empty); every row needs a unique id "
                f"(it names the output object and drives resume), so it was not processed"
            )
        else:
            rows = ", ".join(str(r) for r in rows_of[key])
            msgs.append(
                f"row {i!r}: id appears {len(rows_of[key])} times in the manifest (rows {rows}); "
                f"ids must be unique (they name the output object and drive resume), so none of "
                f"these rows was processed"
            )
        msgs[-1] += collision_note(out_ids[-1])
    n = table.num_rows
    table = table.set_column(
        table.schema.get_field_index("id"), "id", pa.array(out_ids, pa.string())
    )
    now = dt.datetime.now(dt.timezone.utc)
    for name, values in {
        "status": [Status.ERROR.value] * n,
        "error_kind": kinds,
        "error": msgs,
    }.items():
        table = table.append_column(name, pa.array(values, pa.string()))
    return table.append_column(
        "finished_at", pa.array([now] * n, RESULT_SCHEMA.field("finished_at").type)
    )
