"""What the driver learns from a manifest before any cluster work: its schema is checked and its id
column read (cheap even for millions of rows). Rows that can't be processed (an id used twice, or
no id) get their error rows here and never reach the cluster; every manifest row gets one unique
result id."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError, InpaintError, NotFoundError
from batch_inpaint.job.finish import redact_columns
from batch_inpaint.job.guard import input_locations
from batch_inpaint.manifest.schema import RESULT_SCHEMA, conform_manifest
from batch_inpaint.storage.store import Storage, access_error
from batch_inpaint.storage.uri import manifest_base, redact_uri
from batch_inpaint.vocab import ErrorKind, Status


class ManifestScan:
    """What the driver learns from the id column: row ids, the ids that can't be processed
    (duplicated, null or empty), their error rows, and one result id per manifest row."""

    def __init__(
        self, ids: list[str | None], bad_rows: pa.Table, base: str, inputs: list[str] = ()
    ):
        self.ids, self.bad_rows, self.base = ids, bad_rows, base
        self.inputs = list(inputs)  # what the manifest reads: itself, its image and mask folders
        counts: dict[str, int] = {}
        for i in ids:
            if i:
                counts[i] = counts.get(i, 0) + 1
        self.duplicates = {i for i, n in counts.items() if n > 1}
        self.result_ids = result_ids(ids)


def result_ids(ids: list[str | None]) -> list[str]:
    """One unique result id per manifest row: the id itself; 'id#2', 'id#3', ... for later
    occurrences of a duplicated id; '#row-N' for a row with no id (N counts from 0)."""
    seen: dict[str, int] = {}
    out = []
    for n, i in enumerate(ids):
        if not i:
            out.append(f"#row-{n}")
            continue
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


def scan_manifest(storage: Storage, cfg: JobConfig) -> ManifestScan:
    """Check the manifest's schema and ids on the driver before any cluster work. Rows that can't
    be processed become error rows here and never reach the cluster: every row of an id that
    appears twice (we can't know which one was meant; ids name the output objects and drive
    resume), and rows with a null or empty id."""
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_filesystem(cfg.manifest)
    where = f"manifest {redact_uri(cfg.manifest)}"
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        check_parts(dataset, where)
        conform_manifest(dataset.schema.empty_table(), where=where)
        names = [c for c in ("id", "image", "mask") if c in dataset.schema.names]
        table = dataset.to_table(columns=names)
    except InpaintError:
        raise
    except (OSError, pa.ArrowInvalid) as exc:
        missing = access_error(cfg.manifest, exc, "reading the manifest", cfg.profile)
        if isinstance(missing, NotFoundError):
            raise ConfigError(f"{missing}; check the path (or build a manifest with "
                              "`batch-inpaint manifest build`)") from None  # fmt: skip
        if missing is not None:
            raise ConfigError(str(missing)) from None
        raise ConfigError(f"cannot read {where}: {exc}") from None
    ids = pc.cast(table.column("id"), pa.string()).to_pylist()
    positions: dict[str | None, list[int]] = {}
    for n, i in enumerate(ids):
        positions.setdefault(i or None, []).append(n)
    bad = {i for i, rows in positions.items() if i is None or len(rows) > 1}
    bad_rows = _unusable_rows(dataset, bad, positions, ids) if bad else pa.table({})
    base = manifest_base(cfg.manifest)
    uris = [table.column(c) for c in ("image", "mask") if c in table.column_names]
    uris = pa.chunked_array([c for col in uris for c in pc.cast(col, pa.string()).chunks],
                            pa.string())  # fmt: skip
    return ManifestScan(ids, bad_rows, base, input_locations(cfg.manifest, base, uris))


def check_parts(dataset, where: str) -> None:
    """Every part of a manifest folder conforms on its own, and a column has one type in every
    part (else Ray Data fails mid-run); an all-null column's type is no conflict."""
    seen: dict[str, tuple[pa.DataType, str]] = {}
    for fragment in dataset.get_fragments():
        schema = fragment.physical_schema
        conform_manifest(schema.empty_table(), where=f"{where}, part {fragment.path}")
        for field in schema:
            if pa.types.is_null(field.type):
                continue
            first = seen.setdefault(field.name, (field.type, fragment.path))
            if not first[0].equals(field.type):
                raise ConfigError(
                    f"{where}: column {field.name!r} is {first[0]} in part {first[1]} but "
                    f"{field.type} in part {fragment.path}; write every part with one type per "
                    "column (e.g. rewrite it with batch-inpaint manifest build or Manifest.write)"
                )


def _unusable_rows(dataset, bad: set, positions: dict, ids: list) -> pa.Table:
    """Error rows (with their pass-through columns) for duplicated ids and rows without an id."""
    import datetime as dt

    named = sorted(i for i in bad if i is not None)
    where = pc.field("id").isin(named) if named else None
    if None in bad:
        no_id = pc.field("id").is_null() | (pc.field("id") == "")
        where = no_id if where is None else (where | no_id)
    table = redact_columns(dataset.to_table(filter=where))
    # The filter keeps file order, so the k-th row of an id here is its k-th position overall.
    taken: dict[str | None, int] = {}
    all_result_ids = result_ids(ids)
    out_ids, msgs = [], []
    for i in pc.cast(table.column("id"), pa.string()).to_pylist():
        key = i or None
        k = taken.get(key, 0)
        taken[key] = k + 1
        pos = positions[key][k]
        out_ids.append(all_result_ids[pos])
        if key is None:
            msgs.append(
                f"manifest row {pos} has no id (null or empty); every row needs a unique id "
                f"(it names the output object and drives resume), so it was not processed"
            )
        else:
            rows = ", ".join(str(r) for r in positions[key])
            msgs.append(
                f"row {i!r}: id appears {len(positions[key])} times in the manifest (rows {rows}); "
                f"ids must be unique (they name the output object and drive resume), so none of "
                f"these rows was processed"
            )
    n = table.num_rows
    kinds = [
        (ErrorKind.MISSING_ID if r.startswith("#row-") else ErrorKind.DUPLICATE_ID).value
        for r in out_ids
    ]
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
