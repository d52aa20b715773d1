"""Rows out as shards: one output shard per input shard at data/<the input shard's name>, the
same rows in the same order (docs/reference.md, "Shards in and out").

Two halves:
- ShardWriter, the run's SampleWriter (job/io/writers.py): on a worker, `write` only names a
  row's output, `data/<shard>#<index>`; the image bytes travel back to the driver in the result
  row's OUTPUT_BYTES column. On the driver it answers which outputs exist from one listing of
  data/ (a row's output exists when its shard does): no LIST per row.
- ShardCommitter, on the driver: takes the bytes off each result batch, and once every row of a
  shard is final writes the shard whole, once: the input shard re-packed by its format
  (ShardFormat.write) with the inpainted images of its ok rows; skipped and error rows keep the
  input's bytes. Storage writes it whole or not at all (a temp name then a rename on local disk,
  one PUT on S3), so a killed run leaves no half shard under a final name.

A shard some of whose rows an earlier run finished (they are left out of this run) is re-packed
from its output shard instead, so those rows keep their images: e.g. --retry-errors rewrites
only the shards that hold a redone row."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.errors import NotFoundError
from batch_inpaint.job.io.output_folder import DATA, OutputFolder
from batch_inpaint.job.io.parquet_shards import SHARD
from batch_inpaint.job.io.shard_formats import ShardColumns, ShardFormat

OUTPUT_BYTES = "_bi_output_bytes"  # a result row's new image, on its way to the committer


def output_name(shard: str, index: int) -> str:
    return f"{DATA}/{shard}#{index}"


def shard_of(rel: str) -> tuple[str, int]:
    """(shard, index) of a row's output name ('data/a.tar#3' -> ('a.tar', 3))."""
    path, _, index = rel.rpartition("#")
    return path.removeprefix(f"{DATA}/"), int(index)


class ShardWriter:
    """The sample writer of a run whose output is shards (see the module's docstring)."""

    shards = True  # finish sends the encoded image back in OUTPUT_BYTES

    def __init__(self, folder: OutputFolder, fmt: ShardFormat, columns: ShardColumns, masks):
        self.folder, self.format, self.columns, self.masks = folder, fmt, columns, masks
        self.name = fmt.name

    def __repr__(self) -> str:
        return f"ShardWriter({self.folder.root!r}, {self.name!r})"

    def write(self, row_id: str, data: bytes | None, row: Mapping | None = None) -> str:
        return output_name(row[SHARD], int(row["index"]))

    def write_mask(self, row_id: str, data: bytes) -> str:
        return self.masks.write_mask(row_id, data)  # masks/<key>.png, as for files

    def close(self) -> None:
        """Nothing here: the driver's committer writes each shard whole."""

    def read(self, rel: str) -> bytes:
        if not rel.startswith(f"{DATA}/"):
            return self.masks.read(rel)  # a mask detection used
        shard, index = shard_of(rel)
        rows = self.format.read(self.folder.read(f"{DATA}/{shard}"), shard, self.columns)
        if not 0 <= index < rows.num_rows or rows.column("image_bytes")[index].as_py() is None:
            raise NotFoundError(f"{rel}: no image bytes at row {index} of shard {shard}")
        return rows.column("image_bytes")[index].as_py()

    def listing(self) -> tuple[list[str], pa.Array]:
        found = self.folder.list(DATA)
        return found, self.folder.relative(found)

    def present(self) -> pa.Array:
        return self.listing()[1]

    def objects(self, rels: pa.Array) -> pa.Array:
        """The listed object each output lives in: its shard ('data/a.tar#3' -> 'data/a.tar')."""
        return pc.replace_substring_regex(rels, r"#[0-9]+$", "")

    def owns(self, ids: pa.Array):
        """Everything under data/ is the job's own (no user's file can be there: the guard
        refuses a first run into an output that holds data/)."""
        return lambda rel: rel.startswith(f"{DATA}/")

    def remove(self, uri: str) -> None:
        self.folder.delete_uri(uri)


class ShardCommitter:
    """The driver's half (see the module's docstring). `todo`: rows this run does, per shard;
    `base_output`: shards re-packed from their output shard (rows of them are done); `write`
    lists the shards to write (every shard without an output, and those with rows to do)."""

    def __init__(self, writer: ShardWriter, source, extension: str, todo: dict[str, int],
                 base_output: set[str], write: list[str]):  # fmt: skip
        self.writer, self.source, self.extension = writer, source, extension
        self.todo, self.base_output = todo, base_output
        self.waiting = set(write)  # not written yet
        self.final: dict[str, set[int]] = {n: set() for n in write}  # rows final, by shard
        self.images: dict[str, dict[int, bytes]] = {n: {} for n in write}
        self.written: list[str] = []

    def take(self, batch: pa.Table) -> pa.Table:
        """The result batch without its bytes, after noting each row; writes every shard whose
        rows are now all final."""
        if SHARD not in batch.column_names:
            return batch
        data = batch.column(OUTPUT_BYTES) if OUTPUT_BYTES in batch.column_names else None
        touched = set()
        shards = batch.column(SHARD).to_pylist()
        indexes = batch.column("index").to_pylist()
        for i, (shard, index) in enumerate(zip(shards, indexes, strict=True)):
            if shard not in self.final:
                continue
            new = None if data is None else data[i].as_py()
            if shard not in self.waiting:  # written already: a later delivery of a row
                if new is not None:
                    self._write(shard, {index: new}, from_output=True)
                continue
            self.final[shard].add(index)
            if new is not None:
                self.images[shard][index] = new
            touched.add(shard)
        for shard in touched:
            if len(self.final[shard]) >= self.todo.get(shard, 0):
                self._commit(shard)
        return batch.drop_columns([OUTPUT_BYTES]) if data is not None else batch

    def finish(self) -> None:
        """At the end of a run: write the shards with nothing left to do (every row of them an
        error row of the driver, or none at all). A shard still waiting for rows stays
        unwritten: finalize reports its rows' outputs missing and a rerun redoes them."""
        for shard in sorted(self.waiting):
            if len(self.final[shard]) >= self.todo.get(shard, 0):
                self._commit(shard)

    def held_bytes(self) -> int:
        return sum(len(b) for images in self.images.values() for b in images.values())

    def _commit(self, shard: str) -> None:
        self._write(shard, self.images.pop(shard), from_output=shard in self.base_output)
        self.waiting.discard(shard)
        self.written.append(shard)

    def _write(self, shard: str, images: dict[int, bytes], from_output: bool) -> None:
        folder = self.writer.folder
        rel = f"{DATA}/{shard}"
        base = folder.read(rel) if from_output else self.source.read_shard(shard)
        new = {i: (b, self.extension) for i, b in images.items()}
        folder.write(rel, self.writer.format.write(base, new, self.writer.columns))
