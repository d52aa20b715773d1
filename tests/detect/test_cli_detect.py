"""`batch-inpaint detect` in process: masks under OUTPUT/masks/, a manifest that validates and
that `run` accepts, the union with a row's own mask, rows where nothing is found."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from batch_inpaint.cli import main
from batch_inpaint.image import masks as M
from batch_inpaint.manifest import Manifest
from batch_inpaint.storage.uri import output_key
from batch_inpaint.vocab import ExitCode
from tests.detect.conftest import photo


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def small_manifest(tmp_path) -> Path:
    """Three rows with relative URIs: plain; with its own mask image; with a `detect` column."""
    src = tmp_path / "in"
    (src / "img").mkdir(parents=True)
    for i, (h, w) in enumerate([(61, 83), (48, 64), (40, 40)]):
        (src / "img" / f"{i}.png").write_bytes(_png(photo(h, w, i)))
    own = np.zeros((48, 64), np.uint8)
    own[2:6, 50:60] = 255
    (src / "img" / "1_mask.png").write_bytes(_png(own))
    table = pa.table({
        "id": ["plain", "Has Mask", "logo-only"],
        "image": ["img/0.png", "img/1.png", "img/2.png"],
        "mask": [None, "img/1_mask.png", None],
        "detect": [None, None, "logo"],
        "keep": ["a", "b", "c"],
    })  # fmt: skip
    Manifest.from_arrow(table).write(str(src / "manifest.parquet"))
    return src / "manifest.parquet"


def _detect(manifest, out, models, *extra) -> int:
    return main(["detect", "--manifest", str(manifest), "--output", str(out),
                 "--detector", models["detector"], "--device", "cpu", *extra])  # fmt: skip


def test_detect_writes_masks_and_a_manifest_run_accepts(small_manifest, tmp_path,
                                                        tiny_detect_models, capsys):  # fmt: skip
    out = tmp_path / "out"
    rc = _detect(small_manifest, out, tiny_detect_models, "--detect", "watermark,text",
                 "--text-detector", "none", "--threshold", "0", "--max-detections", "2")  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == ExitCode.OK, printed
    assert "3 rows: 3 with a mask from detections" in printed

    m = Manifest.read(str(out / "manifest.parquet"))
    report = m.validate(decode=True)
    assert report.ok, str(report)
    rows = {r["id"]: r for r in m}
    assert [r["keep"] for r in m] == ["a", "b", "c"]  # every column carried, in order
    for rid, row in rows.items():
        assert row["mask"] == str(out / "masks" / output_key(rid, ".png"))
        assert Path(row["image"]).is_absolute() and Path(row["image"]).is_file()
        assert row["detect_note"] is None and len(row["detections"]) == 2
        written = np.asarray(Image.open(row["mask"])) > 127
        h, w = np.asarray(Image.open(row["image"])).shape[:2]
        boxes = [d["box"] for d in row["detections"]]
        assert row["mask_boxes"] == boxes
        assert (written == (written | M.mask_from_boxes(boxes, (w, h)))).all()  # covers them
    assert {d["label"] for d in rows["logo-only"]["detections"]} == {"logo"}  # per-row queries
    own = np.asarray(Image.open(small_manifest.parent / "img" / "1_mask.png")) > 127
    got = np.asarray(Image.open(rows["Has Mask"]["mask"])) > 127
    assert got[own].all()  # the union with the row's own mask
    assert "~" in rows["Has Mask"]["mask"]  # an id that is not a safe key gets a hashed one


def test_rows_where_nothing_is_found_keep_their_mask_and_say_why(small_manifest, tmp_path,
                                                                 tiny_detect_models):  # fmt: skip
    out = tmp_path / "out"
    rc = _detect(small_manifest, out, tiny_detect_models, "--detect", "text",
                 "--detector", "none", "--text-detector", tiny_detect_models["text-detector"],
                 "--text-threshold", "0.99")  # fmt: skip
    assert rc == ExitCode.OK
    rows = {r["id"]: r for r in Manifest.read(str(out / "manifest.parquet"))}
    assert rows["plain"]["mask"] is None and rows["plain"]["detections"] == []
    assert rows["plain"]["detect_note"].startswith("nothing found for text")
    assert rows["Has Mask"]["mask"] == str(small_manifest.parent / "img" / "1_mask.png")
    assert rows["logo-only"]["detect_note"].startswith("nothing found for logo")
    assert not (out / "masks").exists()


def test_sam_masks_replace_boxes(small_manifest, tmp_path, tiny_detect_models):
    out = tmp_path / "out"
    rc = _detect(small_manifest, out, tiny_detect_models, "--detect", "watermark",
                 "--text-detector", "none", "--threshold", "0", "--max-detections", "1",
                 "--segmenter", tiny_detect_models["segmenter"])  # fmt: skip
    assert rc == ExitCode.OK
    rows = {r["id"]: r for r in Manifest.read(str(out / "manifest.parquet"))}
    assert rows["plain"]["mask_boxes"] is None  # SAM's masks are the mask: no boxes added
    assert len(rows["plain"]["detections"]) == 1


def test_bad_settings_are_refused_before_any_model_loads(small_manifest, tmp_path, capsys):
    rc = main(["detect", "--manifest", str(small_manifest), "--output",
               str(small_manifest.parent)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == ExitCode.CONFIG and "contains" in err and "which the manifest reads" in err
    rc = main(["detect", "--manifest", str(small_manifest), "--output", str(tmp_path / "o"),
               "--detect", "logo", "--threshold", "2"])  # fmt: skip
    assert rc == ExitCode.CONFIG and "--threshold must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_run_inpaints_the_detected_masks(ray_local, small_manifest, tmp_path, tiny_detect_models,
                                         capsys):  # fmt: skip
    det = tmp_path / "det"
    assert _detect(small_manifest, det, tiny_detect_models, "--detect", "logo",
                   "--text-detector", "none", "--threshold", "0",
                   "--max-detections", "1") == ExitCode.OK  # fmt: skip
    out = tmp_path / "run"
    rc = main(["run", "--manifest", str(det / "manifest.parquet"), "--output", str(out),
               "--backend", "opencv"])  # fmt: skip
    assert rc == ExitCode.OK, capsys.readouterr().out
    assert (out / "_SUCCESS").is_file()
    for row in Manifest.read(str(det / "manifest.parquet")):
        src = np.asarray(Image.open(row["image"]).convert("RGB"))
        got = np.asarray(Image.open(out / "images" / output_key(row["id"], ".png")).convert("RGB"))
        mask = np.asarray(Image.open(row["mask"])) > 127
        assert ((got == src).all(axis=-1) | mask).all()  # outside the mask: the input's pixels
