"""Manifest: building from prefixes (moto S3, local, memory), Parquet round trips, without_done
(validation: tests/manifest/test_validation.py)."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch_inpaint import Manifest
from batch_inpaint.errors import ConfigError, ManifestError, NotFoundError
from batch_inpaint.job.driver.results import without_done
from batch_inpaint.manifest.schema import SCHEMA_VERSION, VERSION_KEY
from batch_inpaint.storage.store import Storage
from tests.fixtures_s3 import DUMMY_SECRET, put_objects


def png(w=8, h=6, mode="RGB", exif_orientation=None, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im = Image.new(mode, (w, h))
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(buf, format="JPEG", exif=exif.tobytes())
    else:
        im.save(buf, format=fmt)
    return buf.getvalue()


# --- building -------------------------------------------------------------------------------


def test_from_prefix_pairs_1000_plus_objects_and_reports_unpaired(
    s3_bucket, s3_server, s3_storage_options
):
    img, mask = png(), png(mode="L")
    objects = {f"images/sub{i % 3}/img {i:04d}.png": img for i in range(1030)}
    objects["images/ünï code.jpg"] = img
    objects["images/notes.txt"] = b"not an image"
    objects.update({f"masks/sub{i % 3}/img {i:04d}_mask.png": mask for i in range(10, 1030)})
    objects["masks/ünï code_mask.png"] = mask
    objects.update({f"masks/orphan{i}_mask.png": mask for i in range(5)})
    objects["masks/stray.png"] = mask  # matches no pattern
    put_objects(s3_server, s3_bucket, objects)

    m = Manifest.from_prefix(
        f"s3://{s3_bucket}/images/",
        masks=f"s3://{s3_bucket}/masks/",
        mask_pattern="{stem}_mask.png",
        storage=s3_storage_options,
    )
    assert len(m) == 1021
    assert len(set(m.ids)) == len(m)
    assert "ünï code" in m.ids and "sub1/img 1000" in m.ids
    row = next(r for r in m if r["id"] == "sub1/img 1000")
    assert row["image"] == f"s3://{s3_bucket}/images/sub1/img 1000.png"
    assert row["mask"] == f"s3://{s3_bucket}/masks/sub1/img 1000_mask.png"
    assert len(m.unpaired.images) == 10 and m.unpaired.images[0].endswith("img 0000.png")
    assert len(m.unpaired.masks) == 6 and f"s3://{s3_bucket}/masks/stray.png" in m.unpaired.masks
    assert "10 images without a mask, 6 masks without an image" in str(m.unpaired)
    with pytest.raises(ManifestError, match="unpaired"):
        Manifest.from_prefix(
            f"s3://{s3_bucket}/images/", f"s3://{s3_bucket}/masks/",
            mask_pattern="{stem}_mask.png", storage=s3_storage_options, strict=True,
        )  # fmt: skip


def test_from_dirs_patterns_same_dir_alpha_and_duplicate_stems(tmp_path):
    d = tmp_path / "pics"
    (d / "sub").mkdir(parents=True)
    for name in ["a.jpg", "a.png", "b.png", "sub/c.png"]:
        (d / name).write_bytes(png())
    for name in ["a_mask.png", "sub/c_mask.png"]:
        (d / name).write_bytes(png(mode="L"))
    m = Manifest.from_dirs(str(d), str(d), mask_pattern="{stem}_mask.png")
    assert sorted(m.ids) == ["a.jpg", "a.png", "sub/c"]  # shared stem 'a': ids keep extensions
    assert [u.rsplit("/", 1)[-1] for u in m.unpaired.images] == ["b.png"]
    assert m.unpaired.masks == []
    alpha = Manifest.from_dirs(str(d / "sub"), mask_from_alpha=True, prompt="sky")
    assert [(r["id"], r["mask_from_alpha"], r["prompt"]) for r in alpha] == [
        ("c", True, "sky"),
        ("c_mask", True, "sky"),
    ]
    with pytest.raises(ConfigError, match="mask_from_alpha"):
        Manifest.from_dirs(str(d))
    with pytest.raises(ConfigError, match="stem"):
        Manifest.from_dirs(str(d), str(d), mask_pattern="mask.png")
    with pytest.raises(NotFoundError):
        Manifest.from_dirs(str(tmp_path / "none"), str(d))


def test_from_records_pandas_arrow_and_access():
    records = [
        {"id": "a", "image": "s3://b/a.png", "mask": "s3://b/a_m.png", "caption": "x"},
        {"id": "b", "image": "s3://b/b.png", "mask_boxes": [[0, 0, 2, 2]], "seed": 3},
    ]
    m = Manifest.from_records(records)
    assert m.table.column_names == ["id", "image", "mask", "caption", "mask_boxes", "seed"]
    assert list(m)[1]["mask_boxes"] == [[0.0, 0.0, 2.0, 2.0]] and list(m)[0]["caption"] == "x"
    assert len(m) == 2 and len(m.head(1)) == 1 and m.exclude({"a"}).ids == ["b"]
    from_df = Manifest.from_pandas(m.to_pandas()).table
    assert from_df.to_pylist() == m.table.to_pylist()
    assert from_df.schema.field("seed").type == pa.int64()  # float64 with NaN in pandas
    assert Manifest.from_arrow(m.table).table.equals(m.table)
    with pytest.raises(ManifestError, match="'seed'"):
        Manifest.from_records([{"id": "a", "image": "x", "mask": "y", "seed": "abc"}])
    with pytest.raises(ManifestError, match="required column 'image'"):
        Manifest.from_records([{"id": "a", "mask": "y"}])


# --- reading and writing --------------------------------------------------------------------


def _manifest(n: int) -> Manifest:
    return Manifest.from_records(
        [
            {"id": f"r{i:05d}", "image": f"s3://b/{i}.png", "mask": f"s3://b/{i}_m.png", "extra": i}
            for i in range(n)
        ]  # fmt: skip
    )


@pytest.mark.parametrize("where", ["local", "memory", "s3"])
def test_write_read_round_trips(where, tmp_path, request):
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        storage = Storage(request.getfixturevalue("s3_storage_options"))
        base = f"s3://{bucket}/manifests"
    elif where == "memory":
        storage, base = Storage(), f"memory://bi-manifest-{time.time_ns()}"
    else:
        storage, base = Storage(), str(tmp_path / "manifests")
    m = _manifest(1000)
    m.storage = storage
    m.write(f"{base}/one.parquet", row_group_size=250)
    back = Manifest.read(f"{base}/one.parquet", storage)
    assert back.table.equals(m.table)
    assert back.table.schema.metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()
    fs, path = storage.pyarrow_filesystem(f"{base}/one.parquet")
    with fs.open_input_file(path) as f:
        assert pq.ParquetFile(f).num_row_groups == 4

    parts = m.write(f"{base}/parts", rows_per_file=300)
    assert len(parts) == 4 and parts[0].endswith("part-00000.parquet")
    assert Manifest.read(f"{base}/parts/", storage).table.equals(m.table)
    assert len(m.write(f"{base}/parts", partitions=2)) == 2  # earlier parts are replaced
    back = Manifest.read(f"{base}/parts", storage)
    assert back.table.equals(m.table) and back.base == f"{base}/parts"
    with pytest.raises(NotFoundError):
        Manifest.read(f"{base}/nothing.parquet", storage)


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path):
    _manifest(10).write(str(tmp_path / "m.parquet"))
    _manifest(20).write(str(tmp_path / "m.parquet"))
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]
    assert len(Manifest.read(str(tmp_path / "m.parquet"))) == 20


def test_secrets_never_reach_the_written_manifest(s3_bucket, s3_storage_options):
    m = _manifest(5)
    m.storage = Storage(s3_storage_options)
    m.write(f"s3://{s3_bucket}/m.parquet")
    raw = Storage(s3_storage_options).read_bytes(f"s3://{s3_bucket}/m.parquet")
    assert DUMMY_SECRET.encode() not in raw and s3_storage_options.key.encode() not in raw


def test_read_refuses_wrong_types_naming_the_column(tmp_path):
    pq.write_table(pa.table({"id": [1], "image": ["x"], "mask": ["y"]}), tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match="column 'id' has type int64"):
        Manifest.read(str(tmp_path / "bad.parquet"))
    pq.write_table(pa.table({"id": ["a"], "mask": ["y"]}), tmp_path / "noimg.parquet")
    with pytest.raises(ManifestError, match="'image'"):
        Manifest.read(str(tmp_path / "noimg.parquet"))


# --- resume ---------------------------------------------------------------------------------


def _results(storage, out, name, rows):
    """Result rows as the job writes them, with the image of each ok/skipped row in place (a
    row whose image is gone is not done)."""
    buf = io.BytesIO()
    table = pa.table({"id": [r[0] for r in rows], "status": [r[1] for r in rows],
                      "output": [f"images/{r[0]}.png" for r in rows]})  # fmt: skip
    pq.write_table(table, buf)
    storage.write_bytes(f"{out}/metadata/{name}", buf.getvalue())
    for rid, status in rows:
        if status in ("ok", "skipped") and not name.startswith("_"):
            storage.write_bytes(f"{out}/images/{rid}.png", b"png")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_without_done(where, tmp_path, request):
    if where == "s3":
        storage = Storage(request.getfixturevalue("s3_storage_options"))
        out = f"s3://{request.getfixturevalue('s3_bucket')}/out"
    else:
        storage, out = Storage(), str(tmp_path / "out")
    m = _manifest(6)
    m.storage = storage
    assert without_done(m, out).ids == m.ids  # no results yet: every row
    _results(storage, out, "part-a.parquet", [("r00000", "ok"), ("r00001", "error")])
    _results(storage, out, "part-b.parquet", [("r00002", "skipped"), ("r00003", "error"),
                                              ("r00003", "ok"), ("not-in-manifest", "ok")])  # fmt: skip
    _results(storage, out, "_tmp/part-c.parquet", [("r00004", "ok")])  # unfinished write: ignored
    assert without_done(m, out).ids == ["r00004", "r00005"]
    assert without_done(m, out, retry_errors=True).ids == ["r00001", "r00004", "r00005"]
    storage.write_bytes(f"{out}/metadata/broken.parquet", b"PAR1 not really")
    with pytest.raises(ManifestError, match="broken.parquet .* moved to"):
        without_done(m, out)
    assert storage.list(f"{out}/metadata/_damaged")  # set aside, never deleted


def test_docs_example_runs(s3_bucket, s3_server, capsys):
    """The Python example in docs/manifests.md, as written, against the moto endpoint."""
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parents[2] / "docs" / "manifests.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    put_objects(s3_server, s3_bucket, {
        "images/sub/cat.jpg": png(8, 6, fmt="JPEG"), "masks/sub/cat_mask.png": png(8, 6, "L"),
        "images/dog.png": png(8, 6), "masks/dog_mask.png": png(4, 4, "L"),
        "images/lonely.png": png(),
    })  # fmt: skip
    exec(compile(code.replace("s3://photos/", f"s3://{s3_bucket}/"), "manifests.md", "exec"), {})
    out = capsys.readouterr().out
    assert "1 images without a mask" in out and "size_mismatch" in out
    written = Manifest.read(f"s3://{s3_bucket}/manifest.parquet")
    assert written.ids == ["sub/cat"]
