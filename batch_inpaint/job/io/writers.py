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

FilesWriter: one object per row under images/ (+ masks/); ShardWriter (job/io/shard_writer.py):
one shard per input shard under data/. `open_writer` picks the writer a job's config asks for.
Finalize's orphan check asks the writer too: `objects(rels)` (the listed object an output
lives in) and `owns(ids)` (a test for "a run of this job wrote this object")."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.job.io.output_folder import IMAGES, MASKS, OutputFolder
from batch_inpaint.job.io.shard_writer import ShardWriter
from batch_inpaint.shard_options import EXTENSIONS, SHARD_FORMATS
from batch_inpaint.storage.uri import HASH_CHARS, output_key

# storage.local's temp file beside a key (".<key[:100]>.<12 hex>.tmp"), left by a write cut short
# when its process died (node lost, killed): the job's own when the key is.
_PARTIAL = re.compile(r"(?P<dir>(?:.*/)?)\.(?P<key>[^/]+)\.[0-9a-f]{12}\.tmp")


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

    def objects(self, rels: pa.Array) -> pa.Array:
        """The listed object (relative) each output name lives in."""

    def owns(self, ids: pa.Array) -> Callable[[str], bool]:
        """A test for "a run of this job wrote this listed object" (`ids`: the result ids)."""


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

    def objects(self, rels: pa.Array) -> pa.Array:
        return rels  # an output is its own object

    def owns(self, ids: pa.Array) -> Callable[[str], bool]:
        """The image key of a result id in one of the job's encodings (e.g. after a change of
        image_format), or the temp file of such a write cut short."""
        known: set[str] | None = None  # made on the first object no row points to (rarely)
        by_hash: dict[str, str] | None = None

        def ours(rel: str) -> bool:
            nonlocal by_hash, known
            if known is None:
                known = set(ids.to_pylist())
            name = rel.removeprefix(f"{IMAGES}/")
            partial = _PARTIAL.fullmatch(name)
            if partial and len(partial["key"]) < 100:  # a longer key was cut: can't tell, kept
                name = partial["dir"] + partial["key"]
            stem, dot, ext = name.rpartition(".")
            if not dot or ext not in EXTENSIONS.values():
                return False
            if "~" in stem:  # a sanitised key ends in '~' + the id's hash: look the id up by it
                if by_hash is None:
                    by_hash = {hashlib.sha256(i.encode("utf-8", "surrogatepass")).hexdigest()
                               [:HASH_CHARS]: i for i in known}  # fmt: skip
                rid = by_hash.get(stem.rsplit("~", 1)[-1])
            else:
                rid = stem if stem in known else None
            return rid is not None and output_key(rid, "." + ext) == name

        return ours


def objects_of(writer: SampleWriter, rels: pa.Array) -> pa.Array:
    """writer.objects(rels); a writer without it keeps an object per output."""
    objects = getattr(writer, "objects", None)
    return rels if objects is None else objects(rels)


def mask_rel(row_id: str) -> str:
    """Where detection's mask of a row goes, relative to the output root."""
    return f"{MASKS}/" + output_key(str(row_id), ".png")


def open_writer(cfg, storage) -> SampleWriter:
    """The writer a job's config asks for, over `storage` as it is now (the driver's leased
    storage while it holds the lock, a worker's own elsewhere)."""
    files = FilesWriter(OutputFolder(storage, cfg.output), cfg.extension)
    if cfg.output_format not in SHARD_FORMATS:
        return files
    from batch_inpaint.job.io.shard_source import shard_columns, shard_format

    return ShardWriter(files.folder, shard_format(cfg.output_format), shard_columns(cfg), files)


def missing_and_unlisted(
    writer: SampleWriter, keep: pa.Array
) -> tuple[pa.Array, list[tuple[str, str]]]:
    """One listing: the outputs in `keep` (relative) that do not exist, and (uri, relative name)
    of each listed object that holds none of `keep` (writer.objects: a shard holds many)."""
    found, rels = writer.listing()
    held = objects_of(writer, keep)
    listed = pc.is_in(rels, value_set=held)
    missing = keep.filter(pc.invert(pc.is_in(held, value_set=rels.filter(listed))))
    unlisted = pc.invert(listed)
    extra: list[tuple[str, str]] = []
    if pc.any(unlisted).as_py():
        uris = pa.array(found, pa.string()).filter(unlisted).to_pylist()
        extra = list(zip(uris, rels.filter(unlisted).to_pylist(), strict=True))
    return missing, extra
