"""Manifest: the table of rows to inpaint (id, image, mask, overrides, carried columns).

Built from image/mask directories or prefixes, records, Arrow or pandas; read and written as
Parquet (one file or a directory of parts); validated before a run; trimmed to what an earlier
run did not finish (resume)."""

from __future__ import annotations

import math
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_inpaint.errors import ConfigError, ManifestError, NotFoundError
from batch_inpaint.manifest.pairing import IMAGE_EXTENSIONS, Unpaired, pair_files
from batch_inpaint.manifest.schema import MANIFEST_SCHEMA, conform_manifest
from batch_inpaint.manifest.shard_set import ShardSet, check_image_column, shard_set
from batch_inpaint.manifest.validation import ValidationReport, validate_table
from batch_inpaint.storage.store import Storage, StorageOptions, access_error
from batch_inpaint.storage.uri import is_local, local_path, redact_uri

ROW_GROUP_ROWS = 10_000  # ~1-3 MB of manifest rows: readers split and stream files by row group
ROWS_PER_FILE = 100_000  # default for directory manifests (uri ending in '/')


def _storage(storage: Storage | StorageOptions | None) -> Storage:
    if isinstance(storage, Storage):
        return storage
    return Storage(storage)


class Manifest:
    """A validated-schema table of rows; see docs/manifests.md."""

    def __init__(
        self,
        table: pa.Table,
        storage: Storage | StorageOptions | None = None,
        unpaired: Unpaired | None = None,
        base: str | None = None,
    ):
        self._table = conform_manifest(table)
        self.storage = _storage(storage)
        self.unpaired = unpaired if unpaired is not None else Unpaired()
        self.base = base  # relative image/mask URIs resolve against it (the manifest's folder)

    # --- building ---------------------------------------------------------------------------
    @classmethod
    def from_prefix(
        cls,
        images: str,
        masks: str | None = None,
        *,
        mask_pattern: str = "{stem}.*",
        mask_from_alpha: bool = False,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        prompt: str | None = None,
        storage: Storage | StorageOptions | None = None,
        strict: bool = False,
    ) -> Manifest:
        """Pair every image under `images` with the mask under `masks` named by `mask_pattern`
        ('{stem}' = the image's relative path without extension, '*' = anything but '/').
        Unpaired files are reported in `.unpaired` (strict=True: ManifestError instead)."""
        st = _storage(storage)
        if masks is None and not mask_from_alpha:
            raise ConfigError("give masks=<dir or prefix>, or mask_from_alpha=True")
        exts = tuple(e if e.startswith(".") else f".{e}" for e in extensions)
        image_list = st.list(images, suffixes=exts)
        if not image_list:
            raise ManifestError(f"no images ({', '.join(exts)}) under {redact_uri(images)}")
        mask_list = st.list(masks, suffixes=exts) if masks is not None else None
        image_root = local_path(images) if is_local(images) else images
        mask_root = local_path(masks) if masks is not None and is_local(masks) else masks
        rows, unpaired = pair_files(image_list, image_root, mask_list, mask_root, mask_pattern)
        if mask_from_alpha and masks is None:
            for row in rows:
                row["mask_from_alpha"] = True
        if prompt is not None:
            for row in rows:
                row["prompt"] = prompt
        if strict and len(unpaired):
            raise ManifestError(f"unpaired files (strict=True):\n{unpaired}")
        if not rows:
            raise ManifestError(f"no image could be paired with a mask:\n{unpaired}")
        return cls(cls._records_table(rows), st, unpaired)

    @classmethod
    def from_dirs(cls, images: str, masks: str | None = None, **kwargs: Any) -> Manifest:
        """Deprecated alias of from_prefix (which takes local directories too); kept for code
        written against earlier versions."""
        warnings.warn(
            "Manifest.from_dirs is deprecated: call Manifest.from_prefix, which takes local "
            "directories too",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls.from_prefix(images, masks, **kwargs)

    @classmethod
    def from_parquet_dataset(
        cls,
        uri_or_files: str | Sequence[str],
        image_column: str = "image",
        mask_column: str = "mask",
        id_column: str | None = None,
        *,
        storage: Storage | StorageOptions | None = None,
    ) -> ShardSet:
        """Parquet shards with the image bytes inside (a `datasets` dataset, img2dataset's
        Parquet): a folder, pattern, file or list of files. Returns a ShardSet (its rows stay in
        the shards): `JobConfig(output=..., **shards.config())` runs it; docs/manifests.md."""
        found = shard_set(uri_or_files, _storage(storage), "parquet", image_column=image_column,
                          mask_column=mask_column, id_column=id_column)  # fmt: skip
        check_image_column(found)
        return found

    @classmethod
    def from_webdataset(
        cls,
        pattern_or_folder: str | Sequence[str],
        mask_member: str = "mask.png",
        *,
        storage: Storage | StorageOptions | None = None,
    ) -> ShardSet:
        """WebDataset tars (`shards/{00000..00099}.tar`, a folder, a file or a list of files).
        Returns a ShardSet, as from_parquet_dataset does."""
        return shard_set(pattern_or_folder, _storage(storage), "webdataset",
                         mask_member=mask_member)  # fmt: skip

    @staticmethod
    def _records_table(records: list[dict[str, Any]]) -> pa.Table:
        names: dict[str, None] = {}
        for r in records:
            names.update(dict.fromkeys(r))
        arrays = []
        for name in names:
            values = [r.get(name) for r in records]
            known = name in MANIFEST_SCHEMA.names
            try:
                arrays.append(pa.array(values, MANIFEST_SCHEMA.field(name).type if known else None))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ManifestError(f"column {name!r}: {exc}") from None
        return pa.Table.from_arrays(arrays, names=list(names))

    @classmethod
    def from_records(
        cls, records: Iterable[dict[str, Any]], storage: Storage | StorageOptions | None = None
    ) -> Manifest:
        records = list(records)
        if not records:
            raise ManifestError("no records")
        return cls(cls._records_table(records), storage)

    @classmethod
    def from_arrow(
        cls, table: pa.Table, storage: Storage | StorageOptions | None = None
    ) -> Manifest:
        return cls(table, storage)

    @classmethod
    def from_pandas(cls, df: Any, storage: Storage | StorageOptions | None = None) -> Manifest:
        return cls(pa.Table.from_pandas(df, preserve_index=False), storage)

    # --- reading and writing ----------------------------------------------------------------
    @classmethod
    def read(cls, uri: str, storage: Storage | StorageOptions | None = None) -> Manifest:
        """A manifest from one Parquet file or a directory of them (as written by write)."""
        st = _storage(storage)
        fs, path = st.pyarrow_filesystem(uri)
        what = "reading the manifest"
        try:
            info = fs.get_file_info(path)
        except OSError as exc:
            raise access_error(uri, exc, what, st.options.profile) or ManifestError(
                f"{redact_uri(uri)}: can't read it: {exc}"
            ) from None
        if info.type == pafs.FileType.NotFound:
            raise NotFoundError(f"{access_error(uri, FileNotFoundError(), what)}; check the path")
        files = [path]
        if info.type == pafs.FileType.Directory:
            files = _parquet_files(fs, path)
            if not files:
                raise ManifestError(f"{redact_uri(uri)}: directory holds no .parquet files")
        tables = []
        for f in files:
            try:
                tables.append(pq.read_table(f, filesystem=fs, partitioning=None))
            except (OSError, pa.ArrowInvalid) as exc:
                raise access_error(uri, exc, what, st.options.profile) or ManifestError(
                    f"{redact_uri(uri)}: can't read {f}: {exc}"
                ) from None
        try:
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        except pa.ArrowInvalid as exc:
            raise ManifestError(f"{redact_uri(uri)}: parts have different schemas: {exc}") from None
        base = uri.rstrip("/")
        if info.type != pafs.FileType.Directory:
            base = base.rsplit("/", 1)[0] if "/" in base else ""
        return cls(table, st, base=base or None)

    def write(
        self,
        uri: str,
        *,
        partitions: int | None = None,
        rows_per_file: int | None = None,
        row_group_size: int | None = None,
    ) -> list[str]:
        """Write as one Parquet file, or as a directory of part-NNNNN.parquet files when
        partitions/rows_per_file is given or uri ends with '/' (earlier parts are replaced).
        Returns the paths written. Row groups of ROW_GROUP_ROWS rows by default."""
        fs, path = self.storage.pyarrow_filesystem(uri)
        n = len(self)
        rg = row_group_size or ROW_GROUP_ROWS
        if partitions is None and rows_per_file is None and not uri.endswith("/"):
            if is_local(uri):  # the final name appears complete or not at all
                parent, _, name = path.rpartition("/")
                fs.create_dir(parent or "/", recursive=True)
                tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
                pq.write_table(self._table, tmp, filesystem=fs, row_group_size=rg)
                fs.move(tmp, path)
            else:  # object stores publish an upload only when it completes
                pq.write_table(self._table, path, filesystem=fs, row_group_size=rg)
            return [path]
        if partitions is not None and partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {partitions}")
        if rows_per_file is not None and rows_per_file < 1:
            raise ConfigError(f"rows_per_file must be >= 1, got {rows_per_file}")
        count = partitions or max(1, math.ceil(n / (rows_per_file or ROWS_PER_FILE)))
        path = path.rstrip("/")
        fs.create_dir(path, recursive=True)
        for old in _parquet_files(fs, path, recursive=False):
            if old.rsplit("/", 1)[-1].startswith("part-"):
                fs.delete_file(old)
        written = []
        for i in range(count):
            lo, hi = i * n // count, (i + 1) * n // count
            target = f"{path}/part-{i:05d}.parquet"
            pq.write_table(self._table.slice(lo, hi - lo), target, filesystem=fs, row_group_size=rg)
            written.append(target)
        return written

    # --- looking at it ----------------------------------------------------------------------
    @property
    def table(self) -> pa.Table:
        return self._table

    @property
    def ids(self) -> list[str]:
        return self._table.column("id").to_pylist()

    def __len__(self) -> int:
        return self._table.num_rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self._table.to_batches(max_chunksize=4096):
            yield from batch.to_pylist()

    def head(self, n: int = 5) -> Manifest:
        return Manifest(self._table.slice(0, n), self.storage, base=self.base)

    def to_pandas(self) -> Any:
        return self._table.to_pandas()

    def exclude(self, ids: Iterable[str]) -> Manifest:
        """The rows whose id is not in `ids` (e.g. report.bad_ids; a set or an Arrow array)."""
        drop = (
            ids
            if isinstance(ids, (pa.Array, pa.ChunkedArray))
            else pa.array(list(ids), pa.string())
        )
        keep = pc.invert(pc.fill_null(pc.is_in(self._table["id"], value_set=drop), False))
        return Manifest(self._table.filter(keep), self.storage, base=self.base)

    def without_problems(self, report: ValidationReport) -> Manifest:
        """The rows that `report` found nothing wrong with (rows with a null or empty id, and
        every row of a duplicated id, go too)."""
        kept = self.exclude(report.bad_ids)
        ids = kept._table["id"]
        ok = pc.fill_null(pc.greater(pc.utf8_length(ids), 0), False)
        return Manifest(kept._table.filter(ok), self.storage, base=self.base)

    def __repr__(self) -> str:
        return f"Manifest({len(self)} rows, columns={self._table.column_names})"

    # --- checking and resuming --------------------------------------------------------------
    def validate(
        self,
        check_objects: bool = True,
        sample: int | None = None,
        *,
        decode: bool = False,
        max_workers: int = 32,
    ) -> ValidationReport:
        """Every problem found, as a report (`.ok`, `.to_table()`, str()). Object checks read
        headers only unless decode=True, concurrently, for all rows or a random `sample`."""
        return validate_table(
            self._table,
            self.storage,
            check_objects=check_objects,
            sample=sample,
            decode=decode,
            max_workers=max_workers,
            base=self.base,
        )


def _parquet_files(fs: Any, path: str, recursive: bool = True) -> list[str]:
    """Data files of a directory, sorted; hidden and temp files ('.x', '_x') are not data."""
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    out = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        rel = info.path[len(path.rstrip("/")) + 1 :]
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        out.append(info.path)
    return sorted(out)


__all__ = ["Manifest", "Unpaired", "ValidationReport"]
