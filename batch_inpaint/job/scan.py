"""What the driver learns from a manifest before any cluster work: its schema is checked and its id
column read (cheap even for millions of rows). Rows that can't be processed (an id used twice, or
no id) get their error rows here and never reach the cluster; every manifest row gets one unique
result id."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError, InpaintError
from batch_inpaint.manifest.schema import RESULT_SCHEMA, conform_manifest
from batch_inpaint.storage.store import Storage
from batch_inpaint.storage.uri import manifest_base


class ManifestScan:
    """What the driver learns from the id column: row ids, the ids that can't be processed
    (duplicated, null or empty), their error rows, and one result id per manifest row."""

    def __init__(self, ids: list[str | None], bad_rows: pa.Table, base: str):
        self.ids, self.bad_rows, self.base = ids, bad_rows, base
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
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        conform_manifest(dataset.schema.empty_table(), where=f"manifest {cfg.manifest}")
        ids = pc.cast(dataset.to_table(columns=["id"]).column("id"), pa.string()).to_pylist()
    except InpaintError:
        raise
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"cannot read manifest {cfg.manifest}: {exc}") from None
    positions: dict[str | None, list[int]] = {}
    for n, i in enumerate(ids):
        positions.setdefault(i or None, []).append(n)
    bad = {i for i, rows in positions.items() if i is None or len(rows) > 1}
    bad_rows = _unusable_rows(dataset, bad, positions, ids) if bad else pa.table({})
    return ManifestScan(ids, bad_rows, manifest_base(cfg.manifest))


def _unusable_rows(dataset, bad: set, positions: dict, ids: list) -> pa.Table:
    """Error rows (with their pass-through columns) for duplicated ids and rows without an id."""
    import datetime as dt

    named = sorted(i for i in bad if i is not None)
    where = pc.field("id").isin(named) if named else None
    if None in bad:
        no_id = pc.field("id").is_null() | (pc.field("id") == "")
        where = no_id if where is None else (where | no_id)
    table = dataset.to_table(filter=where)
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
    kinds = ["missing_id" if r.startswith("#row-") else "duplicate_id" for r in out_ids]
    table = table.set_column(
        table.schema.get_field_index("id"), "id", pa.array(out_ids, pa.string())
    )
    now = dt.datetime.now(dt.timezone.utc)
    for name, values in {"status": ["error"] * n, "error_kind": kinds, "error": msgs}.items():
        table = table.append_column(name, pa.array(values, pa.string()))
    return table.append_column(
        "finished_at", pa.array([now] * n, RESULT_SCHEMA.field("finished_at").type)
    )
