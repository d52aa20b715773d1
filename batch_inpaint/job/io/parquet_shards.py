"""ParquetShards: Parquet files whose image column holds the image bytes (ShardFormat, see
io/shard_formats.py): a `binary` column, or the Hugging Face `datasets` Image struct
{bytes: binary, path: string} (a null `bytes` with a `path` reads that path, relative to the
shard's folder). img2dataset's Parquet output and `Dataset.to_parquet` both read this way.

read(): ROW_COLUMNS, then the shard's other columns the job may read per row (a `detect`,
`prompt` or `seed` column, a caption): every column that holds no bytes, under its own name,
except the image, mask and id columns. A string mask column is taken as a mask URI (`mask`).

write(): the input table with the image bytes of the given rows replaced; the schema (the
struct, its `path`, the `datasets` features in the file's metadata) and every other column stay
as they were, so `datasets.load_dataset("parquet", ...)` loads the cleaned shard with the same
features."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_inpaint.errors import ConfigError
from batch_inpaint.job.io.shard_formats import ROW_COLUMNS, ShardColumns

SHARD = "shard"  # the column the row source adds: the row's shard, by its name
TAKEN = set(ROW_COLUMNS.names) | {SHARD, "mask"}  # a shard's own column by such a name is left out


def image_type(t: pa.DataType) -> str | None:
    """'binary' or 'struct' when a column of type `t` holds image bytes (as this format reads
    them), else None."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        inner = t.field("bytes").type
        if pa.types.is_binary(inner) or pa.types.is_large_binary(inner):
            return "struct"
    return None


def _holds_bytes(t: pa.DataType) -> bool:
    return "binary" in str(t)


class ParquetShards:
    """Parquet with image bytes: a row per Parquet row (see the module's docstring)."""

    name = "parquet"
    suffix = ".parquet"

    def read(self, data: bytes, shard: str, columns: ShardColumns) -> pa.Table:
        table = pq.read_table(pa.BufferReader(data))
        return rows_of(table, shard, columns)

    def write(
        self, data: bytes, images: dict[int, tuple[bytes, str]], columns: ShardColumns
    ) -> bytes:
        if not images:
            return data  # nothing inpainted: the input shard, byte for byte
        reader = pq.ParquetFile(pa.BufferReader(data))
        table = reader.read()
        where = table.schema.get_field_index(columns.image)
        if where < 0:
            raise ValueError(f"no column {columns.image!r} in the shard")
        column = table.column(where).combine_chunks()
        new = replace_bytes(column, images, table.num_rows)
        table = table.set_column(where, table.schema.field(where), new)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression=_compression(reader))
        return sink.getvalue()


def _compression(reader: pq.ParquetFile) -> str:
    """The input's codec (its first column chunk's), so the output is about as large."""
    meta = reader.metadata
    if meta.num_row_groups and meta.num_columns:
        codec = meta.row_group(0).column(0).compression
        if codec and codec.upper() in ("SNAPPY", "GZIP", "BROTLI", "ZSTD", "LZ4", "NONE"):
            return codec.lower()
    return "snappy"


def replace_bytes(column: pa.Array, images: dict[int, tuple[bytes, str]], n: int) -> pa.Array:
    """`column` (binary, or a struct with `bytes`) with the bytes of the rows in `images`
    replaced; nulls, other fields and the type kept."""
    order = sorted(images)
    mask = [False] * n
    for i in order:
        if not 0 <= i < n:
            raise ValueError(f"no row {i} in a shard of {n}")
        mask[i] = True
    if image_type(column.type) == "binary":
        values = pa.array([images[i][0] for i in order], column.type)
        return pc.replace_with_mask(column, pa.array(mask), values)
    fields = list(column.type)
    children = column.flatten()  # offset-aware; a null struct's fields read null
    at = column.type.get_field_index("bytes")
    values = pa.array([images[i][0] for i in order], fields[at].type)
    children[at] = pc.replace_with_mask(children[at], pa.array(mask), values)
    valid = column.is_valid()
    if pc.all(valid).as_py():
        return pa.StructArray.from_arrays(children, fields=fields)
    return pa.StructArray.from_arrays(children, fields=fields, mask=pc.invert(valid))


def rows_of(table: pa.Table, shard: str, columns: ShardColumns) -> pa.Table:
    """A Parquet shard's table as ROW_COLUMNS plus its carried columns."""
    names = table.column_names
    if columns.image not in names:
        raise ConfigError(f"shard {shard}: no image column {columns.image!r} (columns: "
                          f"{', '.join(names)}); name it with --image-column")  # fmt: skip
    n = table.num_rows
    image_bytes, image_path = _bytes_and_path(table.column(columns.image), shard, columns.image)
    mask_bytes, mask_uri = pa.nulls(n, pa.binary()), None
    if columns.mask in names:
        mask = table.column(columns.mask)
        if pa.types.is_string(mask.type) or pa.types.is_large_string(mask.type):
            mask_uri = pc.cast(mask, pa.string())
        else:
            mask_bytes = _bytes_and_path(mask, shard, columns.mask)[0]
    id_name = columns.id or ("id" if "id" in names else None)
    if id_name is not None and id_name not in names:
        raise ConfigError(f"shard {shard}: no id column {id_name!r} (columns: "
                          f"{', '.join(names)}); name it with --id-column")  # fmt: skip
    if id_name is None:
        ids = pa.array([f"{shard}:{i}" for i in range(n)], pa.string())
    else:
        ids = pc.cast(table.column(id_name), pa.string())
    arrays = [ids, image_bytes, image_path, mask_bytes, pa.array(range(n), pa.int64())]
    out = pa.Table.from_arrays([_one(a) for a in arrays], schema=ROW_COLUMNS)
    if mask_uri is not None:
        out = out.append_column("mask", mask_uri)
    own = {columns.image, columns.mask, "id"}
    for field in table.schema:
        if field.name in own or field.name in TAKEN or _holds_bytes(field.type):
            continue
        out = out.append_column(field, table.column(field.name))
    return out


def _one(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values


def _bytes_and_path(column, shard: str, name: str) -> tuple[pa.Array, pa.Array]:
    """(bytes as binary, path or null) of an image column; ConfigError for any other type."""
    kind = image_type(column.type)
    column = _one(column)
    if kind == "binary":
        return pc.cast(column, pa.binary()), pa.nulls(len(column), pa.string())
    if kind == "struct":
        fields = dict(zip([f.name for f in column.type], column.flatten(), strict=True))
        path = fields.get("path")
        path = pa.nulls(len(column), pa.string()) if path is None else pc.cast(path, pa.string())
        return pc.cast(fields["bytes"], pa.binary()), path
    raise ConfigError(f"shard {shard}: column {name!r} is {column.type}, not image bytes "
                      "(binary, or the datasets struct {bytes, path})")  # fmt: skip
