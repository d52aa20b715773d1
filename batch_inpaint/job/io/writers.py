"""Rows out: a sample writer stores each finished row's output and says which outputs exist.

The shape is img2dataset's writers (`write(...)` per sample, `close()` at the end) with the
driver's question added: `present()`, the outputs that exist, which resume (job/driver/done.py) and
finalize's reconcile ask instead of listing `images/` themselves. A writer that keeps shards
answers from its shard list and the result parts, without a LIST call per 1,000 rows.

- worker side (finish, detect): `write(row_id, data, row)` -> the output's name relative to
  the output root (the result row's `output`), `write_mask(row_id, data)` -> its `mask_used`,
  `close()` when the block's rows are final; `read(rel)` one back (verify, the report);
- driver side: `present()` / `listing()` (what exists), `remove(uri)` (an orphan or a pruned
  row's output; only the job's own, job/driver/finalize.py decides).

Today's only writer is FilesWriter: one object per row under images/ (+ masks/). `open_writer`
picks the writer a job's config asks for; the shards issue adds Parquet and WebDataset ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.job.io.output_folder import IMAGES, MASKS, OutputFolder
from batch_inpaint.storage.uri import output_key


class SampleWriter(Protocol):
    name: str
    folder: OutputFolder

    def write(self, row_id: str, data: bytes, row: Mapping | None = None) -> str:
        """Store one row's encoded output; its name relative to the output root."""

    def write_mask(self, row_id: str, data: bytes) -> str:
        """Store the mask a row used (PNG); its name relative to the output root."""

    def close(self) -> None:
        """The rows written so far are final (a shard writer writes its shard here)."""

    def read(self, rel: str) -> bytes:
        """One output (or mask) back, by its name relative to the root (verify, the report)."""

    def listing(self) -> tuple[list[str], pa.Array]:
        """(full URIs, names relative to the root) of every output that exists."""

    def present(self) -> pa.Array:
        """The names of every output that exists, relative to the root (resume's question)."""

    def remove(self, uri: str) -> None:
        """Remove one output that `listing` returned."""


class FilesWriter:
    """One object per row: images/<key>.<ext> (key from storage.uri.output_key), masks/<key>.png.
    A write replaces the object whole (Storage writes atomically), so a killed run leaves no
    half image under a final name; `close` has nothing to do."""

    name = "files"

    def __init__(self, folder: OutputFolder, extension: str = "png"):
        self.folder, self.extension = folder, extension.lstrip(".")

    def __repr__(self) -> str:
        return f"FilesWriter({self.folder.root!r}, {self.extension!r})"

    def rel(self, row_id: str) -> str:
        """Where a row's image goes, relative to the output root."""
        return f"{IMAGES}/" + output_key(str(row_id), "." + self.extension)

    def write(self, row_id: str, data: bytes, row: Mapping | None = None) -> str:
        rel = self.rel(row_id)
        self.folder.write(rel, data)  # root: no write may follow a symlink out of the output
        return rel

    def write_mask(self, row_id: str, data: bytes) -> str:
        rel = mask_rel(row_id)
        self.folder.write(rel, data)
        return rel

    def close(self) -> None:
        """Nothing is held back: every object was whole when `write` returned."""

    def read(self, rel: str) -> bytes:
        return self.folder.read(rel)

    def listing(self) -> tuple[list[str], pa.Array]:
        found = self.folder.list(IMAGES)
        return found, self.folder.relative(found)

    def present(self) -> pa.Array:
        return self.listing()[1]

    def remove(self, uri: str) -> None:
        self.folder.delete_uri(uri)


def mask_rel(row_id: str) -> str:
    """Where detection's mask of a row goes, relative to the output root."""
    return f"{MASKS}/" + output_key(str(row_id), ".png")


def open_writer(cfg, storage) -> SampleWriter:
    """The writer a job's config asks for, over `storage` as it is now (the driver's leased
    storage while it holds the lock, a worker's own elsewhere). Today: files."""
    return FilesWriter(OutputFolder(storage, cfg.output), cfg.extension)


def missing_and_unlisted(
    writer: SampleWriter, keep: pa.Array
) -> tuple[pa.Array, list[tuple[str, str]]]:
    """One listing: the outputs in `keep` (relative) that do not exist, and (uri, relative name)
    of each existing output that `keep` does not name."""
    found, rels = writer.listing()
    listed = pc.is_in(rels, value_set=keep)
    missing = keep.filter(pc.invert(pc.is_in(keep, value_set=rels.filter(listed))))
    unlisted = pc.invert(listed)
    extra: list[tuple[str, str]] = []
    if pc.any(unlisted).as_py():
        uris = pa.array(found, pa.string()).filter(unlisted).to_pylist()
        extra = list(zip(uris, rels.filter(unlisted).to_pylist(), strict=True))
    return missing, extra
