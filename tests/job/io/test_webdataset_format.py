"""WebDatasetShards (job/io/webdataset_format.py): tars written with the real `webdataset` package
(or tarfile, for names its writer can't make), read into rows, written back with new images, and
read again with `webdataset.WebDataset`: every member byte for byte but the replaced images."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from batch_inpaint.errors import ManifestError
from batch_inpaint.job.io.shard_formats import ROW_COLUMNS, ShardColumns
from batch_inpaint.job.io.webdataset_format import WebDatasetShards, split_name

FMT = WebDatasetShards()
COLS = ShardColumns()


def encoded(seed: int, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def wds_tar(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    return buf.getvalue()


def raw_tar(members: list[tuple[str, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of (name, bytes) in this order; bytes None: a directory entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 1_700_000_000, 0o640
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wds_samples(data: bytes, tmp_path: Path, name: str = "out.tar") -> list[dict]:
    path = tmp_path / name
    path.write_bytes(data)
    drop = ("__url__", "__local_path__")
    return [
        {k: v for k, v in s.items() if k not in drop}
        for s in wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    ]


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def img2dataset_like(n: int) -> list[dict]:
    return [
        {
            "__key__": f"{i:09d}",
            "jpg": encoded(i),
            "mask.png": encoded(100 + i, "PNG"),
            "json": b'{"url": "https://example.com/%d.jpg"}' % i,
            "txt": b"a caption %d" % i,
        }
        for i in range(n)
    ]


def test_reads_samples_in_order_and_writes_back_only_the_replaced_images(tmp_path):
    samples = img2dataset_like(5)
    data = wds_tar(samples)
    table = FMT.read(data, "00000.tar", COLS)
    assert table.schema == ROW_COLUMNS
    assert table["id"].to_pylist() == [s["__key__"] for s in samples]
    assert table["image_bytes"].to_pylist() == [s["jpg"] for s in samples]
    assert table["mask_bytes"].to_pylist() == [s["mask.png"] for s in samples]
    assert table["image_path"].to_pylist() == [f"{s['__key__']}.jpg" for s in samples]
    assert table["index"].to_pylist() == list(range(5))

    new_png, new_jpg = encoded(7, "PNG"), encoded(8)
    out = FMT.write(data, {1: (new_png, "png"), 3: (new_jpg, "jpg")}, COLS)
    back = wds_samples(out, tmp_path)
    assert len(back) == 5
    for i, (before, after) in enumerate(zip(samples, back, strict=True)):
        expected = dict(before)
        if i == 1:  # PNG bytes for a .jpg member: renamed so the name tells the truth
            del expected["jpg"]
            expected["png"] = new_png
        elif i == 3:
            expected["jpg"] = new_jpg
        assert after == expected, i
    # member order and metadata kept; the renamed member keeps its place, mode and mtime
    old, new = members(data), members(out)
    assert [m.name for m in new] == [m.name.replace("000000001.jpg", "000000001.png") for m in old]
    assert [(m.mode, m.mtime, m.uname, m.gname) for m in new] == [
        (m.mode, m.mtime, m.uname, m.gname) for m in old
    ]
    # and our own reader sees the new images at the same rows
    again = FMT.read(out, "00000.tar", COLS)
    assert again["image_bytes"][1].as_py() == new_png
    assert again["image_path"][1].as_py() == "000000001.png"
    assert again["id"].to_pylist() == table["id"].to_pylist()


def test_members_it_does_not_change_keep_their_exact_bytes():
    data = wds_tar(img2dataset_like(3))
    assert FMT.write(data, {}, COLS) == data
    # the same image written back: headers made again from the input's come out identical
    same = {i: (s["jpg"], "jpg") for i, s in enumerate(img2dataset_like(3))}
    assert FMT.write(data, same, COLS) == data
    gnu = raw_tar(
        [("k" * 120 + ".jpg", b"x" * 700), ("k" * 120 + ".txt", b"t")], tarfile.GNU_FORMAT
    )
    assert FMT.write(gnu, {0: (b"x" * 700, "jpg")}, COLS) == gnu


def test_a_sample_without_an_image_is_a_row_with_no_image_bytes(tmp_path):
    samples = img2dataset_like(3)
    del samples[1]["jpg"]
    data = wds_tar(samples)
    table = FMT.read(data, "s.tar", COLS)
    assert table["id"].to_pylist() == [s["__key__"] for s in samples]
    assert table["image_bytes"][1].as_py() is None
    assert table["image_path"][1].as_py() is None
    assert table["mask_bytes"][1].as_py() == samples[1]["mask.png"]
    out = FMT.write(data, {2: (b"new", "jpg")}, COLS)
    assert wds_samples(out, tmp_path)[1] == samples[1]
    with pytest.raises(ValueError, match="000000001.*no image member"):
        FMT.write(data, {1: (b"new", "jpg")}, COLS)


def test_odd_member_names_group_as_webdataset_groups_them(tmp_path):
    data = raw_tar(
        [
            ("__meta__", b"top-level metadata: skipped, carried"),
            ("v1.2/train", None),  # a directory entry: carried
            ("v1.2/train/000.JPG", encoded(1)),  # dots in directories; an uppercase suffix
            ("v1.2/train/000.seg.png", encoded(2, "PNG")),  # suffix seg.png: not the image
            ("v1.2/train/001.jpeg", encoded(3)),
            ("v1.2/train/001.cls", b"3"),
            ("README", b"no suffix: not in any sample, carried"),
            ("002.webp", encoded(4, "WEBP")),
        ]
    )
    ours = FMT.read(data, "odd.tar", ShardColumns(mask_member="seg.png"))
    theirs = wds_samples(data, tmp_path, "odd.tar")
    assert ours["id"].to_pylist() == [s["__key__"] for s in theirs]
    assert ours["id"].to_pylist() == ["v1.2/train/000", "v1.2/train/001", "002"]
    assert ours["image_path"].to_pylist() == [
        "v1.2/train/000.JPG",
        "v1.2/train/001.jpeg",
        "002.webp",
    ]
    assert ours["mask_bytes"].to_pylist() == [encoded(2, "PNG"), None, None]
    assert split_name("v1.2/train/000.seg.png") == ("v1.2/train/000", "seg.png")

    new = {0: (b"png-bytes", "png"), 1: (b"jpeg-bytes", "jpg"), 2: (b"webp-bytes", "webp")}
    out = FMT.write(data, new, ShardColumns(mask_member="seg.png"))
    names = [m.name for m in members(out)]
    # .JPG with PNG bytes is renamed; .jpeg with JPEG bytes keeps its spelling
    assert names == [
        "__meta__",
        "v1.2/train",
        "v1.2/train/000.png",
        "v1.2/train/000.seg.png",
        "v1.2/train/001.jpeg",
        "v1.2/train/001.cls",
        "README",
        "002.webp",
    ]
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert tar.extractfile("__meta__").read() == b"top-level metadata: skipped, carried"
        assert tar.extractfile("README").read() == b"no suffix: not in any sample, carried"
        assert tar.getmember("v1.2/train").isdir()
    back = wds_samples(out, tmp_path)
    assert [s.get("png") or s.get("jpeg") or s.get("webp") for s in back] == [
        b"png-bytes",
        b"jpeg-bytes",
        b"webp-bytes",
    ]
    assert back[0]["seg.png"] == encoded(2, "PNG") and back[1]["cls"] == b"3"


def test_a_renamed_image_keeps_its_name_when_the_sample_has_that_name_already(tmp_path):
    data = raw_tar([("k.jpg", b"jpeg"), ("k.png", b"another picture")])
    out = FMT.write(data, {0: (b"new png", "png")}, COLS)
    assert [m.name for m in members(out)] == ["k.jpg", "k.png"]
    assert wds_samples(out, tmp_path) == [
        {"__key__": "k", "jpg": b"new png", "png": b"another picture"}
    ]


def test_a_key_that_comes_back_later_is_a_new_sample_with_its_own_id(tmp_path):
    data = raw_tar([("a.jpg", b"1"), ("b.jpg", b"2"), ("a.jpg", b"3"), ("a#2.jpg", b"4")])
    theirs = wds_samples(data, tmp_path)
    assert [s["__key__"] for s in theirs] == ["a", "b", "a", "a#2"]
    table = FMT.read(data, "dup.tar", COLS)
    assert table["id"].to_pylist() == ["a", "b", "a#2#", "a#2"]
    assert table["image_bytes"].to_pylist() == [b"1", b"2", b"3", b"4"]
    out = FMT.write(data, {2: (b"three", "jpg")}, COLS)
    assert [s["jpg"] for s in wds_samples(out, tmp_path)] == [b"1", b"2", b"three", b"4"]


def test_a_suffix_twice_in_one_sample_is_refused_as_webdataset_refuses_it(tmp_path):
    data = raw_tar([("a.jpg", b"1"), ("a.jpg", b"2")])
    with pytest.raises(ValueError, match="duplicate file name"):
        wds_samples(data, tmp_path)
    with pytest.raises(ManifestError, match=r"dup\.tar.*'a\.jpg'.*duplicate"):
        FMT.read(data, "dup.tar", COLS)


def test_an_empty_tar_has_no_rows(tmp_path):
    data = wds_tar([])
    assert wds_samples(data, tmp_path) == []
    table = FMT.read(data, "empty.tar", COLS)
    assert table.num_rows == 0 and table.schema == ROW_COLUMNS
    assert FMT.write(data, {}, COLS) == data


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: b"", "not a readable tar"),
        (lambda d: d[: members(d)[0].offset_data + 100], "truncated tar"),  # inside a member
        (lambda d: d[: members(d)[3].offset], "truncated tar"),  # cut between members
        (lambda d: d[:1536] + b"\x07" * (len(d) - 1536), "(truncated|damaged) tar"),
        (lambda d: b"this is not a tar file" * 100, "not a readable tar"),
        (lambda d: d[:1024], "not a readable tar"),  # cut inside a header
        (lambda d: gzip.compress(d), "a compressed tar"),
    ],
)
def test_a_damaged_shard_is_refused_naming_it(damage, message):
    data = damage(wds_tar(img2dataset_like(3)))
    with pytest.raises(ManifestError, match=rf"^s3://b/shards/00042\.tar: {message}"):
        FMT.read(data, "s3://b/shards/00042.tar", COLS)
