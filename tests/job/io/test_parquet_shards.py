"""ParquetShards (job/io/parquet_shards.py): shards written by the real `datasets` package (the
Image struct) and as plain binary columns, read into rows and re-packed; the outputs read back
with `datasets`: the same features, every other column and the struct's path as they were."""

from __future__ import annotations

import io

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_inpaint.errors import ConfigError
from batch_inpaint.job.io.parquet_shards import ParquetShards
from batch_inpaint.job.io.shard_formats import ROW_COLUMNS, ShardColumns
from tests.job.io.shard_data import shard_rows, write_hf_shards

FMT = ParquetShards()


def test_a_datasets_shard_reads_into_rows_with_ids_from_shard_and_index(tmp_path):
    (path,) = write_hf_shards(tmp_path, 1, 3)
    rows = FMT.read(path.read_bytes(), path.name, ShardColumns())
    assert rows.schema.names[:5] == ROW_COLUMNS.names
    assert rows.column("id").to_pylist() == [f"{path.name}:{i}" for i in range(3)]
    assert rows.column("index").to_pylist() == [0, 1, 2]
    want = shard_rows(0, 3)
    assert rows.column("image_bytes").to_pylist() == [r["bytes"] for r in want["image"]]
    assert rows.column("image_path").to_pylist() == [r["path"] for r in want["image"]]
    assert rows.column("mask_bytes").to_pylist() == [r["bytes"] for r in want["mask"]]
    assert rows.column("caption").to_pylist() == want["caption"]  # carried for the results


def test_rewrite_replaces_only_the_given_images_and_keeps_the_schema(tmp_path):
    (path,) = write_hf_shards(tmp_path, 1, 4)
    data = path.read_bytes()
    out = tmp_path / "out.parquet"
    out.write_bytes(FMT.write(data, {1: (b"new one", "png"), 3: (b"new three", "png")},
                              ShardColumns()))  # fmt: skip
    before, after = pq.read_table(path), pq.read_table(out)
    assert after.schema.equals(before.schema)
    key = b"huggingface"  # datasets' features, kept (pyarrow may add keys of its own)
    assert after.schema.metadata[key] == before.schema.metadata[key]
    images = after.column("image").to_pylist()
    old = before.column("image").to_pylist()
    assert [r["bytes"] for r in images] == [old[0]["bytes"], b"new one", old[2]["bytes"],
                                             b"new three"]  # fmt: skip
    assert [r["path"] for r in images] == [r["path"] for r in old]
    for name in ("mask", "caption", "score"):
        assert after.column(name).equals(before.column(name))
    got = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert got.features == datasets.Dataset.from_parquet(str(path)).features
    assert FMT.write(data, {}, ShardColumns()) == data  # nothing inpainted: the input itself


def test_binary_columns_an_id_column_nulls_and_a_path_without_bytes(tmp_path):
    table = pa.table({
        "key": ["a", "b", "c"],
        "jpg": pa.array([b"x", None, b"z"], pa.binary()),
        "url": ["u1", "u2", "u3"],
    })  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(table, buf)
    cols = ShardColumns(image="jpg", id="key")
    rows = FMT.read(buf.getvalue(), "s.parquet", cols)
    assert rows.column("id").to_pylist() == ["a", "b", "c"]
    assert rows.column("image_bytes").to_pylist() == [b"x", None, b"z"]
    assert rows.column("key").to_pylist() == ["a", "b", "c"]  # its own column, carried too
    out = pq.read_table(pa.BufferReader(FMT.write(buf.getvalue(), {2: (b"Z", "png")}, cols)))
    assert out.column("jpg").to_pylist() == [b"x", None, b"Z"] and out.schema == table.schema
    struct = pa.table({"image": pa.array([{"bytes": None, "path": "images/a.png"}, None],
                                         pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(struct, buf)
    rows = FMT.read(buf.getvalue(), "t.parquet", ShardColumns())
    assert rows.column("image_bytes").to_pylist() == [None, None]
    assert rows.column("image_path").to_pylist() == ["images/a.png", None]  # read as a URI
    out = pq.read_table(pa.BufferReader(FMT.write(buf.getvalue(), {0: (b"P", "png")},
                                                  ShardColumns())))  # fmt: skip
    assert out.column("image").to_pylist() == [{"bytes": b"P", "path": "images/a.png"}, None]


def test_a_shard_without_the_image_or_id_column_is_refused_by_name(tmp_path):
    (path,) = write_hf_shards(tmp_path, 1, 2)
    with pytest.raises(ConfigError, match=r"train-00000.parquet: no image column 'picture'"):
        FMT.read(path.read_bytes(), path.name, ShardColumns(image="picture"))
    with pytest.raises(ConfigError, match="no id column 'uid'.*--id-column"):
        FMT.read(path.read_bytes(), path.name, ShardColumns(id="uid"))
    with pytest.raises(ConfigError, match="column 'caption' is string, not image bytes"):
        FMT.read(path.read_bytes(), path.name, ShardColumns(image="caption"))
