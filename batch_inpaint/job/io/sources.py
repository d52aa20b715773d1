"""Rows in: a row source is where a job's rows come from, read by the driver's scan and by both
executors, so none of them opens `cfg.manifest` itself.

What a source answers:
- for the driver's scan (job/driver/scan.py): `schema()`, `check(where, needs_mask)` (every part
  conforms), `batches(columns)` (the id column and the image/mask URIs, in batches: cheap at
  10 M rows) and `rows_where(expr)` (whole rows of a few ids: the driver's error rows);
  `uri` (what the guard keeps the output away from) and `base` (relative URIs resolve there);
- for the local executor: `blocks(rows, keep)`, its rows in blocks of `rows`, each batch passed
  through `keep` (the done/duplicate/no-id filter) before it is cut;
- for the Ray executor: `ray_dataset(data)`, a Ray Dataset of its rows, given the `ray.data`
  module (so this module never imports Ray).

Sources: ParquetManifest, a manifest of URIs in Parquet (one file or a folder of parts), and
ShardSource (job/io/shard_source.py): Parquet with image bytes, or WebDataset tars, read shard
by shard. `open_source` picks the source for a config from what its `manifest` names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pyarrow as pa

from batch_inpaint.errors import ConfigError
from batch_inpaint.manifest.schema import conform_manifest
from batch_inpaint.storage.uri import manifest_base

Keep = Callable[[pa.Table], pa.Table]


class RowSource(Protocol):
    name: str
    uri: str
    base: str

    def schema(self) -> pa.Schema: ...

    def check(self, where: str, needs_mask: bool = True) -> None: ...

    def batches(
        self, columns: list[str], batch_size: int = 1 << 18
    ) -> Iterator[pa.RecordBatch]: ...

    def rows_where(self, expr) -> pa.Table: ...

    def blocks(self, rows: int, keep: Keep | None = None) -> Iterator[pa.Table]: ...

    def ray_dataset(self, data: Any) -> Any: ...


class ParquetManifest:
    """A manifest of URIs in Parquet (one file, or a folder of parts), read with pyarrow's
    dataset API on the driver and with Ray Data's read_parquet on a cluster."""

    name = "manifest"

    def __init__(self, storage, uri: str):
        self.storage, self.uri = storage, uri
        self.base = manifest_base(uri)
        self._dataset = None

    def __repr__(self) -> str:
        return f"ParquetManifest({self.uri!r})"

    def __getstate__(self) -> dict:  # the pyarrow dataset stays behind (made again on use)
        return {**self.__dict__, "_dataset": None}

    def dataset(self):
        if self._dataset is None:
            import pyarrow.dataset as pads

            fs, path = self.storage.pyarrow_filesystem(self.uri)
            self._dataset = pads.dataset(path, filesystem=fs, format="parquet")
        return self._dataset

    def schema(self) -> pa.Schema:
        return self.dataset().schema

    def check(self, where: str, needs_mask: bool = True) -> None:
        """Every part conforms on its own and a column has one type in every part (else Ray Data
        fails mid-run); an all-null column's type is no conflict. Then the whole schema."""
        check_parts(self.dataset(), where, needs_mask=needs_mask)
        conform_manifest(self.schema().empty_table(), where=where, needs_mask=needs_mask)

    def batches(self, columns: list[str], batch_size: int = 1 << 18) -> Iterator[pa.RecordBatch]:
        # little read-ahead: the default (16 batches of 4 fragments) holds ~1 GB at 10 M rows
        return self.dataset().to_batches(columns=columns, batch_size=batch_size,
                                         batch_readahead=2, fragment_readahead=1)  # fmt: skip

    def rows_where(self, expr) -> pa.Table:
        return self.dataset().to_table(filter=expr)

    def blocks(self, rows: int, keep: Keep | None = None) -> Iterator[pa.Table]:
        """The rows in blocks of `rows`; each part is read on its own (its own schema: an
        all-null column may be typed null in one part and not in another)."""
        for fragment in self.dataset().get_fragments():
            buffered: list[pa.Table] = []
            n = 0
            for batch in fragment.to_batches(batch_size=max(rows, 1024)):
                table = pa.Table.from_batches([batch])
                if keep is not None:
                    table = keep(table)
                buffered.append(table)
                n += table.num_rows
                if n >= rows:
                    whole = pa.concat_tables(buffered)
                    cut = n - n % rows
                    for start in range(0, cut, rows):
                        yield whole.slice(start, rows)
                    buffered, n = [whole.slice(cut)], n - cut
            if n:
                yield pa.concat_tables(buffered)

    def ray_dataset(self, data: Any) -> Any:
        fs, path = self.storage.pyarrow_filesystem(self.uri)
        return data.read_parquet(path, filesystem=fs)


def open_source(cfg, storage) -> RowSource:
    """The row source a job's config names: shards when it names shards, else its manifest of
    URIs in Parquet."""
    from batch_inpaint.job.io.shard_source import find_shards

    found = find_shards(cfg, storage)
    return found if found is not None else ParquetManifest(storage, cfg.manifest)


def check_parts(dataset, where: str, needs_mask: bool = True) -> None:
    """Every part of a manifest folder conforms on its own, and a column has one type in every
    part (else Ray Data fails mid-run); an all-null column's type is no conflict."""
    seen: dict[str, tuple[pa.DataType, str]] = {}
    for fragment in dataset.get_fragments():
        schema = fragment.physical_schema
        conform_manifest(schema.empty_table(), where=f"{where}, part {fragment.path}",
                         needs_mask=needs_mask)  # fmt: skip
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
