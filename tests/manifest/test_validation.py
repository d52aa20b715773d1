"""Manifest validation: every problem a row can have, found before any model work, under the job's
own words (ErrorKind); override values checked by the job's own row_generation."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pytest
from PIL import Image

from batch_inpaint import Manifest
from batch_inpaint.errors import ConfigError
from batch_inpaint.manifest.schema import OVERRIDE_COLUMNS
from batch_inpaint.manifest.validation import validate_table
from batch_inpaint.params import GenerationParams, row_generation
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import ErrorKind
from tests.fixtures_s3 import put_objects
from tests.manifest.test_manifest import png


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
        (None, "id", "missing_id"),  # the job's word for the same row
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


# (column, value, accepted): one rule for `validate` and the job, both through row_generation
ROW_VALUES = [
    ("seed", 0, True),
    ("seed", 2**63 - 1, True),
    ("seed", -5, False),
    ("seed", 1.5, False),
    ("seed", 7.0, True),  # a whole float (pandas' integer column with gaps) is that integer
    ("num_inference_steps", 3.0, True),
    ("num_inference_steps", 1, True),
    ("num_inference_steps", 2.5, False),
    ("num_inference_steps", 0, False),
    ("num_inference_steps", 1001, False),
    ("num_inference_steps", True, False),
    ("num_inference_steps", "20", False),
    ("guidance_scale", 7, True),
    ("guidance_scale", 0.0, True),
    ("guidance_scale", "x", False),
    ("guidance_scale", -1.0, False),
    ("guidance_scale", float("nan"), False),
    ("strength", 1.0, True),
    ("strength", 0.5, True),
    ("strength", 0, False),
    ("strength", 1.5, False),
    ("prompt", "a wall", True),
    ("prompt", "", True),
    ("prompt", 5, False),
    ("negative_prompt", "blur", True),
    ("negative_prompt", 3.5, False),
]


@pytest.mark.parametrize(("column", "value", "accepted"), ROW_VALUES, ids=repr)
def test_validate_and_row_generation_agree_on_row_values(column, value, accepted):
    """`manifest validate` reports exactly the values the job's row_generation refuses, under the
    same column, with the same message."""
    row = {"id": "r", "image": "x.png", "mask_boxes": [[0.0, 0.0, 1.0, 1.0]], column: value}
    report = validate_table(pa.Table.from_pylist([row]), Storage(), check_objects=False)
    bad = [p for p in report if p.kind == ErrorKind.BAD_VALUE]
    if accepted:
        params = row_generation(row, GenerationParams())
        assert getattr(params, column) == value and report.ok, str(report)
        return
    with pytest.raises(ConfigError, match=f"column '{column}'") as info:
        row_generation(row, GenerationParams())
    assert info.value.kind == ErrorKind.BAD_VALUE  # the job's error row says what validate says
    assert [(p.row_id, p.column, p.message) for p in bad] == [("r", column, str(info.value))]


def test_row_values_cover_every_override_column():
    assert {c for c, _, _ in ROW_VALUES} == set(OVERRIDE_COLUMNS)


def test_row_generation_applies_only_the_rows_non_null_overrides():
    base = GenerationParams(prompt="job", num_inference_steps=20, eta=0.3, seed=9)
    row = {"id": "r", "prompt": "row", "num_inference_steps": None, "seed": 4, "eta": 1.0}
    got = row_generation(row, base)
    assert (got.prompt, got.num_inference_steps, got.seed) == ("row", 20, 4)
    assert got.eta == 0.3  # not an override column: a row can't change it
    assert isinstance(row_generation({"num_inference_steps": 3.0}, base).num_inference_steps, int)
    assert row_generation({}, base) == base


# --- queries instead of masks (docs/masks.md): validate judges rows as `run` would -------------
def _detect_manifest(tmp_path, detect) -> str:
    """Rows whose only mask source is their `detect` value (and one done by `detect`)."""
    import pyarrow.parquet as pq

    from batch_inpaint.detect.base import detections_arrow_type

    (tmp_path / "a.png").write_bytes(png())
    ids = ["own", "empty", "blank", "null", "bad", "done"]
    done = [None] * 5 + [[]]  # `batch-inpaint detect` found nothing there: no mask, no queries
    table = pa.table({"id": ids, "image": ["a.png"] * 6, "detect": detect,
                      "detections": pa.array(done, detections_arrow_type())})  # fmt: skip
    pq.write_table(table, tmp_path / "m.parquet")
    return str(tmp_path / "m.parquet")


@pytest.mark.parametrize(
    "detect",
    [
        pa.array([["logo"], [], ["  "], None, [None], ["logo"]], pa.list_(pa.string())),
        pa.array(["logo", "", " , ", None, None, "logo"]),
        pa.array([None, None, None, None, 5, None], pa.int64()),  # a column of the wrong type
    ],
    ids=["lists", "strings", "ints"],
)
def test_validate_counts_a_rows_queries_as_its_mask_source(tmp_path, detect):
    as_lists, ints = pa.types.is_list(detect.type), pa.types.is_integer(detect.type)
    m = Manifest.read(_detect_manifest(tmp_path, detect))

    def problems(queries=()):
        report = validate_table(m.table, m.storage, base=m.base, queries=queries)
        return {(p.row_id, p.column, p.kind) for p in report}, report

    found, report = problems()
    bad = {("bad", "detect", ErrorKind.BAD_VALUE.value)} if as_lists or ints else set()
    no_mask = {(rid, "mask", ErrorKind.NO_MASK.value) for rid in ("empty", "blank", "null")}
    no_mask |= {("own", "mask", ErrorKind.NO_MASK.value)} if ints else set()
    no_mask |= set() if bad else {("bad", "mask", ErrorKind.NO_MASK.value)}  # a null string
    done = {("done", "mask", ErrorKind.NO_MASK.value)}
    assert found == bad | done | no_mask
    assert "'detect' column" in next(p.message for p in report if p.row_id == "null")
    if bad:
        assert "column 'detect'" in next(p.message for p in report if p.row_id == "bad")
    # with the job's queries (run --detect), empty values take them: only the bad row is left,
    # and the row `detect` already did (its mask is the manifest's, and it has none)
    assert problems(["watermark"])[0] == bad | done


def test_manifest_validate_takes_run_s_detect(tmp_path, capsys):
    from batch_inpaint.cli import main

    (tmp_path / "a.png").write_bytes(png())
    only_queries = tmp_path / "q.parquet"
    Manifest.from_records([{"id": "a", "image": "a.png", "detect": "logo, text"}]).write(
        str(only_queries)
    )
    assert main(["manifest", "validate", str(only_queries)]) == 0, capsys.readouterr()
    no_mask_column = tmp_path / "plain.parquet"
    Manifest.from_records([{"id": "a", "image": "a.png", "detect": None}]).write(
        str(no_mask_column)
    )
    assert main(["manifest", "validate", str(no_mask_column)]) == 1  # no_mask: nothing to detect
    assert "no_mask" in capsys.readouterr().out
    assert main(["manifest", "validate", str(no_mask_column), "--detect", "watermark"]) == 0
    # no mask column at all: as `run --detect` takes it
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "image": ["a.png"]}), tmp_path / "bare.parquet")
    assert main(["manifest", "validate", str(tmp_path / "bare.parquet")]) == 2
    capsys.readouterr()
    assert main(["manifest", "validate", str(tmp_path / "bare.parquet"), "--detect", "logo"]) == 0
    assert "OK: 1 rows" in capsys.readouterr().out
    assert main(["manifest", "validate", str(only_queries), "--detect", " , "]) == 2
    assert "--detect has no query" in capsys.readouterr().err
