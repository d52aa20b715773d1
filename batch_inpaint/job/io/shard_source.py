"""Rows from shards (a RowSource, job/io/sources.py): Parquet with image bytes or WebDataset
tars, read shard by shard with their ShardFormat (io/shard_formats.py).

`--manifest SOURCE` names shards when it is (the kind is found from what is there, by
manifest/shard_set.py, which `manifest validate` and jobs/clean.py share; or a shard list file):
- a pattern (`s3://b/shards/{00000..00099}.tar`, braces or globs), a `.tar` file, or a folder
  holding `.tar` files: WebDataset;
- a `.parquet` file, a pattern of them or a folder of them, whose image column
  (`image_column`) holds bytes (binary, or the datasets struct {bytes, path}): Parquet shards;
- anything else is a manifest of URIs (ParquetManifest), as before.

A shard's name is its path relative to the shards' folder (`root`); its rows carry it in the
`shard` column and their position in `index`. The scan reads ids only where the format allows
(Parquet: the id column, or the row count when there is none); the executors read whole shards,
and a block never holds rows of two shards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.errors import ConfigError, ManifestError
from batch_inpaint.job.io.parquet_shards import SHARD, ParquetShards
from batch_inpaint.job.io.shard_formats import ShardColumns, ShardFormat
from batch_inpaint.manifest.shard_listing import SHARD_SUFFIXES, Shard, is_pattern
from batch_inpaint.storage.uri import redact_uri

BYTES = ("image_bytes", "mask_bytes")  # what rows carry to the stages, never into results


def shard_format(name: str) -> ShardFormat:
    if name == "parquet":
        return ParquetShards()
    from batch_inpaint.job.io.webdataset_format import WebDatasetShards

    return WebDatasetShards()


def shard_columns(cfg) -> ShardColumns:
    s = cfg.shards
    return ShardColumns(image=s.image_column, mask=s.mask_column, id=s.id_column,
                        mask_member=s.mask_member)  # fmt: skip


class ShardSource:
    """The rows of a list of shards, in order: shard by shard, each in its own order."""

    def __init__(self, storage, uri: str, kind: str, root: str, shards: list[Shard], columns):
        self.storage, self.uri, self.kind = storage, uri, kind
        self.root, self.columns = root.rstrip("/"), columns
        self.uris = {s.name: s.uri for s in shards}
        self.names = list(self.uris)
        self.base = self.root  # a struct's path (bytes null) resolves against the shards' folder

    @property
    def name(self) -> str:
        return self.kind

    def __repr__(self) -> str:
        return f"ShardSource({self.kind}, {redact_uri(self.uri)!r}, {len(self.names)} shards)"

    @property
    def format(self) -> ShardFormat:
        return shard_format(self.kind)

    def shard_uri(self, name: str) -> str:
        return self.uris[name]

    def read_shard(self, name: str) -> bytes:
        return self.storage.read_bytes(self.shard_uri(name))

    def rows(self, name: str) -> pa.Table:
        """A shard's rows (ROW_COLUMNS, carried columns, `shard`)."""
        table = self.format.read(self.read_shard(name), name, self.columns)
        return table.append_column(SHARD, pa.array([name] * table.num_rows, pa.string()))

    # -- the driver's scan
    def schema(self) -> pa.Schema:
        return pa.schema([("id", pa.string()), (SHARD, pa.string()), ("index", pa.int64())])

    def check(self, where: str, needs_mask: bool = True) -> None:
        if not self.names:
            raise ConfigError(f"{where}: no {self.kind} shards there")

    def batches(self, columns: list[str], batch_size: int = 1 << 18) -> Iterator[pa.RecordBatch]:
        for name in self.names:
            try:
                ids = self._ids(name)
            except ManifestError as exc:  # the scan reads every shard before any work
                raise ManifestError(
                    f"{exc}. A damaged shard stops the run before any work: replace it, or run "
                    "the other shards from a shard list without it (`batch-inpaint manifest "
                    "build ... -o set.shards.json`, edit the list, `run --manifest "
                    "set.shards.json`)", kind=exc.kind) from None  # fmt: skip
            yield from ids.select(columns).to_batches(max_chunksize=batch_size)

    def _ids(self, name: str) -> pa.Table:
        """id, shard and index of a shard's rows; a Parquet shard reads its id column only."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            fs, path = self.storage.pyarrow_filesystem(self.shard_uri(name))
            with fs.open_input_file(path) as f:
                file = pq.ParquetFile(f)
                names = file.schema_arrow.names
                if self.columns.image not in names:  # the format says why
                    return self._light(self.rows(name))
                want = self.columns.id or ("id" if "id" in names else None)
                if want is None:
                    n = file.metadata.num_rows
                    ids = pa.array([f"{name}:{i}" for i in range(n)], pa.string())
                elif want in names:
                    ids = pc.cast(file.read(columns=[want]).column(want), pa.string())
                else:
                    return self._light(self.rows(name))
            n = len(ids)
            return pa.table({"id": ids, SHARD: pa.array([name] * n, pa.string()),
                             "index": pa.array(range(n), pa.int64())})  # fmt: skip
        return self._light(self.rows(name))

    @staticmethod
    def _light(rows: pa.Table) -> pa.Table:
        return rows.select(["id", SHARD, "index"])

    def rows_where(self, expr) -> pa.Table:
        """Whole rows (without their bytes) of the ids `expr` selects: the driver's error rows."""
        import pyarrow.dataset as pads

        found = [pads.dataset(without_bytes(self.rows(n))).to_table(filter=expr)
                 for n in self.names]  # fmt: skip
        return pa.concat_tables(found, promote_options="permissive")

    # -- the executors
    def blocks(self, rows: int, keep=None) -> Iterator[pa.Table]:
        for name in self.names:
            table = self.rows(name)
            if keep is not None:
                table = keep(table)
            for start in range(0, table.num_rows, max(rows, 1)):
                yield table.slice(start, rows)

    def ray_dataset(self, data: Any) -> Any:
        items = data.from_items([{SHARD: n} for n in self.names])
        return items.map_batches(read_rows, batch_format="pyarrow", batch_size=1,
                                 fn_kwargs={"source": self})  # fmt: skip


def read_rows(batch: pa.Table, source: ShardSource) -> pa.Table:
    """Ray: the rows of the shards a batch names (one, batch_size=1)."""
    tables = [source.rows(n) for n in batch.column(SHARD).to_pylist()]
    return pa.concat_tables(tables, promote_options="permissive")


def without_bytes(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in BYTES if c in table.column_names])


def find_shards(cfg, storage) -> ShardSource | None:
    """The shards `cfg.manifest` names (manifest/shard_set.py: a pattern, folder, file or shard
    list file), or None when it is a manifest of URIs (its own read says what is wrong)."""
    from batch_inpaint.manifest.shard_set import find_shard_set

    keys = {k: getattr(cfg.shards, k) for k in ("image_column", "mask_column", "id_column",
                                                 "mask_member")}  # fmt: skip
    try:
        found = find_shard_set(cfg.manifest, storage, **keys)
    except ConfigError:
        if is_pattern(cfg.manifest) or _holds_bytes(storage, cfg.manifest):
            raise  # shards, with a wrong key: say so
        return None  # a manifest of URIs with a wrong column: its own check says which
    if found is None:
        return None
    source = found.source or ""
    one_file = source.lower().endswith(SHARD_SUFFIXES) and not is_pattern(source)
    where = found.shards[0].uri if one_file else found.root  # what the guard keeps the output off
    return ShardSource(storage, where, found.format, found.root, list(found.shards),
                       shard_columns(cfg))  # fmt: skip


def _holds_bytes(storage, uri: str) -> bool:
    """True when the Parquet file or folder has a column holding bytes (shards, not URIs)."""
    import pyarrow.dataset as pads

    try:
        fs, path = storage.pyarrow_filesystem(uri)
        schema = pads.dataset(path, filesystem=fs, format="parquet").schema
    except (OSError, pa.ArrowInvalid):
        return False
    return any("binary" in str(f.type) for f in schema)


def with_output_format(cfg, source):
    """`cfg` with output_format resolved for its source (auto: files for a manifest of URIs,
    the shards' own format for shards); a shard format the input can't give is refused (exit
    2): a shard output re-packs its input shard, so it has the input's format."""
    import dataclasses

    kind = source.kind if isinstance(source, ShardSource) else None
    fmt = cfg.output_format
    if fmt == "auto":
        return dataclasses.replace(cfg, output_format=kind or "files")
    if fmt in ("files", kind):
        return cfg
    what = f"{kind} shards" if kind else "a manifest of URIs (no input shards to re-pack)"
    raise ConfigError(f"config field 'output_format': {fmt} needs {fmt} input shards, and the "
                      f"manifest {redact_uri(cfg.manifest)} is {what}; use output_format "
                      f"{kind or 'files'} (or files: one image a row)")  # fmt: skip
