"""Shard formats: how one shard's bytes become rows, and how a cleaned shard is made from the
input shard's bytes and the rows' new images. The job never rebuilds a shard from its rows: it
re-packs the input shard, changing only the image of each row it inpainted, so every other
column or member stays byte for byte and a reader of the input reads the output the same way.

A format answers:
- `read(data, shard, columns)` -> the shard's rows in order, as a table with the columns in
  ROW_COLUMNS (id, image bytes, mask bytes or null, image name, index) plus any the format
  carries for the job (a `detect` or prompt column, say);
- `write(data, images, columns)` -> the output shard's bytes: `data` (the input shard) with the
  image of each row index in `images` replaced by the bytes given (`images[i] = (bytes, ext)`,
  ext the encoding's extension: "png", "jpg", "webp").

Formats: ParquetShards here (Parquet with image bytes: a binary column or the Hugging Face
`datasets` struct {bytes, path}) and WebDatasetShards (io/webdataset_format.py: tar shards as
webdataset and img2dataset write them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

# The columns every format's read() gives, whatever the shard calls them.
ROW_COLUMNS = pa.schema(
    [
        ("id", pa.string()),  # the row's id: an id column, a __key__, or "<shard>:<index>"
        ("image_bytes", pa.binary()),  # null with image_path set: read that path instead
        ("image_path", pa.string()),  # a struct's `path` / a member name; informational
        ("mask_bytes", pa.binary()),  # null: no mask in the shard (detect, or an error row)
        ("index", pa.int64()),  # the row's position in its shard, from 0
    ]
)


@dataclass(frozen=True)
class ShardColumns:
    """Where a shard keeps what the job needs (YAML image_column, mask_column, id_column,
    mask_member)."""

    image: str = "image"
    mask: str = "mask"
    id: str | None = None  # None: "id" when the shard has one, else "<shard>:<index>"
    mask_member: str = "mask.png"  # WebDataset: the member holding the mask


class ShardFormat(Protocol):
    name: str  # "parquet" | "webdataset": also the value of output_format
    suffix: str  # ".parquet" | ".tar": the files a shard folder holds

    def read(self, data: bytes, shard: str, columns: ShardColumns) -> pa.Table:
        """The shard's rows in order: ROW_COLUMNS, then whatever else the job may read."""

    def write(
        self, data: bytes, images: dict[int, tuple[bytes, str]], columns: ShardColumns
    ) -> bytes:
        """The input shard `data` with the images of the rows in `images` replaced."""
