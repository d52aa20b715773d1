"""Manifest: building from prefixes (moto S3, local, memory), Parquet round trips, validate,
without_done."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch_inpaint import Manifest
from batch_inpaint.errors import ConfigError, ManifestError, NotFoundError
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


# --- validate -------------------------------------------------------------------------------


def test_validate_reports_every_problem(s3_bucket, s3_server, s3_storage_options):
    b = f"s3://{s3_bucket}"
    noisy = io.BytesIO()
    Image.frombytes("RGB", (64, 32), bytes(range(256)) * 24).save(noisy, format="PNG")
    truncated = noisy.getvalue()[: len(noisy.getvalue()) // 2]  # header fine, pixel data cut
    put_objects(s3_server, s3_bucket, {
        "good.png": png(8, 6), "good_m.png": png(8, 6, "L"),
        "small_m.png": png(4, 4, "L"), "empty.png": b"", "junk.png": b"not an image at all",
        "rotated.jpg": png(8, 6, exif_orientation=6), "rotated_m.png": png(6, 8, "L"),
        "rgba.png": png(8, 6, "RGBA"), "trunc.png": truncated,
        "dir with space/ü.png": png(8, 6),
    })  # fmt: skip
    rows = [
        {"id": "ok", "image": f"{b}/good.png", "mask": f"{b}/good_m.png"},
        {"id": "ok-unicode", "image": f"{b}/dir with space/ü.png", "mask": f"{b}/good_m.png"},
        {"id": "ok-exif", "image": f"{b}/rotated.jpg", "mask": f"{b}/rotated_m.png"},
        {"id": "ok-alpha", "image": f"{b}/rgba.png", "mask_from_alpha": True},
        {"id": "ok-boxes", "image": f"{b}/good.png", "mask_boxes": [[0, 0, 2, 2]]},
        {"id": "../escape", "image": f"{b}/good.png", "mask": f"{b}/good_m.png"},
        {"id": "dup", "image": f"{b}/good.png", "mask": f"{b}/good_m.png"},
        {"id": "dup", "image": f"{b}/good.png", "mask": f"{b}/good_m.png"},
        {"id": None, "image": f"{b}/good.png", "mask": f"{b}/good_m.png"},
        {"id": "missing", "image": f"{b}/missing.png", "mask": f"{b}/good_m.png"},
        {"id": "mismatch", "image": f"{b}/good.png", "mask": f"{b}/small_m.png"},
        {"id": "zero", "image": f"{b}/empty.png", "mask": f"{b}/good_m.png"},
        {"id": "junk", "image": f"{b}/good.png", "mask": f"{b}/junk.png"},
        {"id": "metadata", "image": "http://169.254.169.254/latest/meta-data/", "mask": "x.png"},
        {"id": "chained", "image": f"simplecache::{b}/good.png", "mask": f"{b}/good_m.png"},
        {"id": "nomask", "image": f"{b}/good.png"},
        {"id": "noalpha", "image": f"{b}/good.png", "mask_from_alpha": True},
        {"id": "noimage", "image": None, "mask": f"{b}/good_m.png"},
        {"id": "badbox", "image": f"{b}/good.png", "mask_boxes": [[5, 5, 1, 1], [0, 1]]},
        {"id": "badpoly", "image": f"{b}/good.png", "mask_polygons": [[[0, 0], [1, 1]]]},
        {"id": "badsteps", "image": f"{b}/good.png", "mask": f"{b}/good_m.png",
         "num_inference_steps": 0, "strength": 2.0},
        {"id": "trunc", "image": f"{b}/trunc.png", "mask_boxes": [[0, 0, 1, 1]]},
    ]  # fmt: skip
    m = Manifest.from_records(rows, s3_storage_options)
    report = m.validate()
    found = {(p.row_id, p.column, p.kind) for p in report}
    expected = {
        ("dup", "id", "duplicate_id"),
        (None, "id", "null_id"),
        ("missing", "image", "not_found"),
        ("mismatch", "mask", "size_mismatch"),
        ("zero", "image", "decode"),
        ("junk", "mask", "decode"),
        ("metadata", "image", "uri_rejected"),
        ("chained", "image", "uri_rejected"),
        ("nomask", "mask", "no_mask"),
        ("noalpha", "mask_from_alpha", "no_alpha"),
        ("noimage", "image", "missing_image"),
        ("badbox", "mask_boxes", "bad_box"),
        ("badpoly", "mask_polygons", "bad_polygon"),
        ("badsteps", "num_inference_steps", "bad_value"),
        ("badsteps", "strength", "bad_value"),
    }
    assert expected <= found, expected - found
    assert not report.bad_ids & {"ok", "ok-unicode", "ok-exif", "ok-alpha", "ok-boxes", "../escape"}
    assert not report.ok and report.rows == len(rows)
    assert "trunc" not in report.bad_ids  # header-only check: the size is readable
    text = str(report)
    assert "ROW ID" in text and "mismatch" in text and "mask is 4x4 but the image is 8x6" in text
    assert report.to_table().num_rows == len(report.problems)
    assert report.counts()["duplicate_id"] == 2

    decoded = m.validate(decode=True)  # full decode also catches the truncated image
    assert ("trunc", "image", "decode") in {(p.row_id, p.column, p.kind) for p in decoded}
    rows_only = m.validate(check_objects=False)
    assert rows_only.rows_checked == 0 and "missing" not in rows_only.bad_ids
    assert m.validate(sample=3).rows_checked == 3
    clean = m.without_problems(report).validate()
    assert clean.ok and "OK" in str(clean)


def test_validate_403_object(s3_bucket, s3_list_only_options):
    b = f"s3://{s3_bucket}"
    m = Manifest.from_records(
        [{"id": "secret", "image": f"{b}/private.png", "mask_boxes": [[0, 0, 1, 1]]}],
        s3_list_only_options,
    )
    report = m.validate()
    assert [(p.row_id, p.kind) for p in report] == [("secret", "access_denied")]
    assert f"{b}/private.png" in report.problems[0].message


def test_validate_checks_objects_concurrently(s3_bucket, s3_server, s3_storage_options, flaky_s3):
    put_objects(
        s3_server, s3_bucket, {f"i{i}.png": png() for i in range(60)} | {"m.png": png(mode="L")}
    )
    rows = [{"id": f"r{i}", "image": f"s3://{s3_bucket}/i{i}.png", "mask": f"s3://{s3_bucket}/m.png"}
            for i in range(60)]  # fmt: skip
    m = Manifest.from_records(rows, s3_storage_options.replace(endpoint_url=flaky_s3.url))
    flaky_s3.delay_s = 0.1  # 61 objects one after the other: > 6 s
    start = time.monotonic()
    assert m.validate().ok
    assert time.monotonic() - start < 3.0
    assert flaky_s3.requests <= 61 + 5  # each object once, the shared mask too


def test_validate_resolves_relative_uris_against_the_manifest_folder(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png())
    (tmp_path / "img" / "a_m.png").write_bytes(png(mode="L"))
    Manifest.from_records([{"id": "a", "image": "img/a.png", "mask": "img/a_m.png"}]).write(
        str(tmp_path / "m.parquet")
    )
    assert Manifest.read(str(tmp_path / "m.parquet")).validate().ok


# --- resume ---------------------------------------------------------------------------------


def _results(storage, out, name, rows):
    buf = io.BytesIO()
    table = pa.table({"id": [r[0] for r in rows], "status": [r[1] for r in rows],
                      "output": [f"{out}/images/{r[0]}.png" for r in rows]})  # fmt: skip
    pq.write_table(table, buf)
    storage.write_bytes(f"{out}/metadata/{name}", buf.getvalue())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_without_done(where, tmp_path, request):
    if where == "s3":
        storage = Storage(request.getfixturevalue("s3_storage_options"))
        out = f"s3://{request.getfixturevalue('s3_bucket')}/out"
    else:
        storage, out = Storage(), str(tmp_path / "out")
    m = _manifest(6)
    m.storage = storage
    assert m.without_done(out).ids == m.ids  # no results yet: every row
    _results(storage, out, "part-a.parquet", [("r00000", "ok"), ("r00001", "error")])
    _results(storage, out, "part-b.parquet", [("r00002", "skipped"), ("r00003", "error"),
                                              ("r00003", "ok"), ("not-in-manifest", "ok")])  # fmt: skip
    _results(storage, out, "_tmp/part-c.parquet", [("r00004", "ok")])  # unfinished write: ignored
    assert m.without_done(out).ids == ["r00004", "r00005"]
    assert m.without_done(out, retry_errors=True).ids == ["r00001", "r00004", "r00005"]
    storage.write_bytes(f"{out}/metadata/broken.parquet", b"PAR1 not really")
    with pytest.raises(ManifestError, match="broken.parquet"):
        m.without_done(out)


def test_docs_example_runs(s3_bucket, s3_server, capsys):
    """The Python example in docs/manifests.md, as written, against the moto endpoint."""
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "manifests.md").read_text()
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


def test_validate_flags_formats_the_job_refuses(tmp_path):
    """A GIF decodes with Pillow, but the job's allowlist refuses it: validate says so up front."""
    (tmp_path / "a.gif").write_bytes(png(8, 6, mode="P", fmt="GIF"))
    (tmp_path / "b.png").write_bytes(png(8, 6))
    m = Manifest.from_records(
        [
            {"id": "gif", "image": str(tmp_path / "a.gif"), "mask_boxes": [[0, 0, 2, 2]]},
            {"id": "png", "image": str(tmp_path / "b.png"), "mask_boxes": [[0, 0, 2, 2]]},
        ]
    )
    report = m.validate()
    assert report.bad_ids == {"gif"}
    assert "unsupported format GIF" in str(report)
