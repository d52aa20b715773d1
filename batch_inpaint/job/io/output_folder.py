"""The output's layout in one place: the names the job writes under its output root and the
operations on them (after datatrove's DataFolder). Nothing else spells `images/` or `_SUCCESS`.

    _BATCH_INPAINT   ownership marker (job/driver/guard.py), written once
    _LOCK            the run's lock (job/driver/lock.py)
    job.json         the config and versions, written when a run opens
    images/          one object per ok/skipped row (the files writer, job/io/writers.py)
    data/            shard outputs: one per input shard, same name (job/io/shard_writer.py)
    masks/           the masks detection used (masks/<key>.png)
    metadata/        result rows in Parquet parts; one file per manifest row's id after finalize
    report.html  run.json  _SUCCESS   written by finalize, _SUCCESS before run.json

An OutputFolder is cheap: make one from the storage as it is at the time of the write. While the
driver holds the lock, `run.storage` is a LeasedStorage whose writes check the lease (RunState's
`folder` property does this); a folder made from the plain storage would bypass that check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.errors import NotFoundError
from batch_inpaint.storage.uri import join, same_location

IMAGES = "images"
DATA = "data"
MASKS = "masks"
METADATA = "metadata"
MANIFESTS = "manifests"  # jobs/clean.py's manifests
JOB_JSON = "job.json"
RUN_JSON = "run.json"
REPORT = "report.html"
SUCCESS = "_SUCCESS"
LOCK = "_LOCK"
MARKER = "_BATCH_INPAINT"
# Every name the job writes directly under its output (guard: never over a user's file).
OWN_NAMES = (IMAGES, DATA, METADATA, MANIFESTS, JOB_JSON, RUN_JSON, REPORT, SUCCESS, LOCK,
             MASKS, MARKER)  # fmt: skip


@dataclass(frozen=True)
class OutputFolder:
    """`root` (a URI or local path) and the storage that reads and writes it. Every write and
    delete passes `root`, so none may follow a symlink out of the output."""

    storage: Any  # batch_inpaint.storage.store.Storage (or the driver's LeasedStorage)
    root: str

    def uri(self, *rel: str) -> str:
        """A name under the root as a full URI ('images', 'x.png' -> root/images/x.png)."""
        return join(self.root, *rel) if rel else self.root

    # the layout's names, as URIs
    @property
    def images(self) -> str:
        return self.uri(IMAGES)

    @property
    def masks(self) -> str:
        return self.uri(MASKS)

    @property
    def metadata(self) -> str:
        return self.uri(METADATA)

    @property
    def success(self) -> str:
        return self.uri(SUCCESS)

    @property
    def run_json(self) -> str:
        return self.uri(RUN_JSON)

    @property
    def job_json(self) -> str:
        return self.uri(JOB_JSON)

    @property
    def report(self) -> str:
        return self.uri(REPORT)

    @property
    def lock(self) -> str:
        return self.uri(LOCK)

    @property
    def marker(self) -> str:
        return self.uri(MARKER)

    # operations on names relative to the root
    def write(self, rel: str, data: bytes, *, overwrite: bool = True) -> bool:
        return self.storage.write_bytes(self.uri(rel), data, overwrite=overwrite, root=self.root)

    def read(self, rel: str) -> bytes:
        return self.storage.read_bytes(self.uri(rel))

    def exists(self, rel: str) -> bool:
        return self.storage.exists(self.uri(rel))

    def delete(self, rel: str) -> None:
        self.storage.delete(self.uri(rel), root=self.root)

    def delete_uri(self, uri: str) -> None:
        """Delete an object a listing of this folder returned (a full URI)."""
        self.storage.delete(uri, root=self.root)

    def list(self, rel: str) -> list[str]:
        """Full URIs of every object under `rel`; [] when there is none (not found)."""
        try:
            return self.storage.list(self.uri(rel))
        except NotFoundError:
            return []

    def relative(self, uris: list[str]) -> pa.Array:
        """URIs under the root as paths relative to it, in Arrow (no Python string per row)."""
        return relative(uris, self.root)

    def sub(self, rel: str) -> OutputFolder:
        return OutputFolder(self.storage, self.uri(rel))


def relative(uris: list[str], root: str) -> pa.Array:
    """URIs under `root` as paths relative to it, in Arrow (the list is freed by the caller)."""
    prefix = same_location(root).rstrip("/") + "/"
    arr = pa.array(uris, pa.string())
    if uris and same_location(uris[0]) != uris[0]:
        arr = pa.array([same_location(u) for u in uris], pa.string())
    return pc.utf8_slice_codeunits(arr, len(prefix))


def output_rel(value: str | None) -> str | None:
    """A result row's `output` as a path relative to the output root ('images/<key>.<ext>').
    Rows written before outputs were relative hold a full URI: its 'images/...' tail is kept,
    so an output folder that was copied or moved still resumes."""
    if not value or value.startswith(("images/", "data/")):  # data/: a shard row's (shard#index)
        return value
    tail = value.rsplit("/images/", 1)
    return "images/" + tail[1] if len(tail) == 2 else value


def output_rels(outputs) -> pa.Array:
    """output_rel of a whole column, in Arrow."""
    outputs = outputs.combine_chunks() if isinstance(outputs, pa.ChunkedArray) else outputs
    outputs = pc.cast(outputs, pa.string())
    tail = pc.replace_substring_regex(outputs, r"^.*/images/", "images/")
    as_is = pc.or_(pc.starts_with(outputs, "images/"), pc.starts_with(outputs, "data/"))
    return pc.if_else(as_is, outputs, tail)
