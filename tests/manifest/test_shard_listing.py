"""Which shards a source names (manifest/shard_listing.py): files, folders, brace patterns as
webdataset writes them, globs and lists; on local disk and a local S3 server."""

from __future__ import annotations

import pytest

from batch_inpaint.errors import ConfigError
from batch_inpaint.manifest.shard_listing import Shard, expand, list_shards, shard_root
from batch_inpaint.storage.store import Storage
from tests.fixtures_s3 import put_objects


def make(tmp_path, names):
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return str(tmp_path)


def test_a_folder_lists_its_shards_sorted_with_subfolders_and_without_temp_names(tmp_path):
    root = make(
        tmp_path / "ds",
        ["b/00001.tar", "a/00000.tar", "00002.tar", ".00003.tar.tmp", "_SUCCESS", "_tmp/9.tar",
         ".hidden/8.tar", "notes.txt", "train.parquet"],
    )  # fmt: skip
    shards = list_shards(Storage(), root, (".tar",))
    assert [s.name for s in shards] == ["00002.tar", "a/00000.tar", "b/00001.tar"]
    assert shards[1] == Shard(f"{root}/a/00000.tar", "a/00000.tar")
    assert [s.name for s in list_shards(Storage(), root + "/")] == [
        "00002.tar",
        "a/00000.tar",
        "b/00001.tar",
        "train.parquet",
    ]


def test_brace_patterns_expand_as_webdataset_expands_them_in_their_order(tmp_path):
    root = make(tmp_path, ["train/0.tar", "train/1.tar", "val/0.tar", "val/1.tar", "x/0.tar"])
    assert expand("s/{00..02}.tar") == ["s/00.tar", "s/01.tar", "s/02.tar"]
    shards = list_shards(Storage(), f"{root}/{{val,train}}/{{0..1}}.tar")
    assert [s.name for s in shards] == ["val/0.tar", "val/1.tar", "train/0.tar", "train/1.tar"]
    assert shard_root(f"{root}/{{val,train}}/{{0..1}}.tar") == root


def test_a_pattern_naming_absent_shards_is_refused_unless_they_may_come_later(tmp_path):
    root = make(tmp_path, [f"{i:05d}.tar" for i in range(3)])
    with pytest.raises(ConfigError, match=r"7 of its 10 shards are not there \(.*00003\.tar"):
        list_shards(Storage(), f"{root}/{{00000..00009}}.tar")
    growing = list_shards(Storage(), f"{root}/{{00000..00009}}.tar", missing_ok=True)
    assert [s.name for s in growing] == ["00000.tar", "00001.tar", "00002.tar"]


def test_globs_single_files_and_lists(tmp_path, monkeypatch):
    root = make(tmp_path, ["data/train-0.parquet", "data/train-1.parquet", "data/test-0.parquet"])
    glob = list_shards(Storage(), f"{root}/data/train-*.parquet")
    assert [s.name for s in glob] == ["train-0.parquet", "train-1.parquet"]
    monkeypatch.chdir(tmp_path)  # relative paths read as the listing's absolute ones
    one = list_shards(Storage(), "data/test-0.parquet")
    assert one == [Shard(f"{root}/data/test-0.parquet", "test-0.parquet")]
    files = [f"{root}/data/train-1.parquet", f"{root}/data/test-0.parquet"]
    assert [s.name for s in list_shards(Storage(), files)] == ["train-1.parquet", "test-0.parquet"]
    with pytest.raises(ConfigError, match="1 of its 2 shards are not there"):
        list_shards(Storage(), [files[0], f"{root}/data/gone.parquet"])
    with pytest.raises(ConfigError, match="no shards"):
        list_shards(Storage(), str(tmp_path / "empty"))


def test_object_storage_one_listing_for_a_pattern(s3_bucket, s3_server, s3_storage_options):
    put_objects(s3_server, s3_bucket, {f"shards/{i:05d}.tar": b"t" for i in range(5)})
    put_objects(s3_server, s3_bucket, {"shards/_SUCCESS": b"", "other/0.tar": b"t"})
    storage = Storage(s3_storage_options)
    shards = list_shards(storage, f"s3://{s3_bucket}/shards/{{00001..00003}}.tar")
    assert shards == [
        Shard(f"s3://{s3_bucket}/shards/{i:05d}.tar", f"{i:05d}.tar") for i in (1, 2, 3)
    ]
    folder = list_shards(storage, f"s3://{s3_bucket}/shards/")
    assert [s.name for s in folder] == [f"{i:05d}.tar" for i in range(5)]
    assert shard_root(f"s3://{s3_bucket}/shards/{{00001..00003}}.tar") == f"s3://{s3_bucket}/shards"
