"""`batch-inpaint detect` where a new user trips: outputs over the inputs or over files detect
did not write (refused, nothing touched), images of extreme sizes (they detect; a row the
detector fails on fails alone), repeated --detect flags, `python -m batch_inpaint`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from batch_inpaint.cli import main
from batch_inpaint.detect import BoxesDetector, Detection, MaskProvider
from batch_inpaint.job.detect_rows import MARKER, detect_manifest
from batch_inpaint.manifest import Manifest
from batch_inpaint.vocab import ExitCode
from tests.detect.conftest import photo


def _png(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, "PNG")
    return buf.getvalue()


def _manifest(path: Path, ids, images, masks=None, detect=None) -> Path:
    cols = {"id": ids, "image": images,
            "mask": pa.array(masks or [None] * len(ids), pa.string())}  # fmt: skip
    if detect is not None:
        cols["detect"] = detect
    path.parent.mkdir(parents=True, exist_ok=True)
    Manifest.from_arrow(pa.table(cols)).write(str(path))
    return path


def _detect(manifest, out, models, *extra) -> int:
    return main(["detect", "--manifest", str(manifest), "--output", str(out),
                 "--detector", models["detector"], "--text-detector", "none", "--device", "cpu",
                 "--threshold", "0.01", *extra])  # fmt: skip


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# -- 1. the output never overwrites what detect did not write ----------------------------------
def test_an_output_holding_the_rows_masks_is_refused_and_left_alone(tmp_path, tiny_detect_models,
                                                                     capsys):  # fmt: skip
    """The new user's case: manifest in ov/manifests/, its mask in ov/masks/, --output ov."""
    ov = tmp_path / "ov"
    (ov / "masks").mkdir(parents=True)
    (tmp_path / "astronaut.png").write_bytes(_png(photo(48, 64, 0)))
    own = np.zeros((48, 64), np.uint8)
    own[:5, :5] = 255
    (ov / "masks" / "astronaut.png").write_bytes(_png(own))
    m = _manifest(ov / "manifests" / "m.parquet", ["astronaut"], [str(tmp_path / "astronaut.png")],
                  ["../masks/astronaut.png"])  # fmt: skip
    before = _tree(tmp_path)
    rc = _detect(m, ov, tiny_detect_models, "--detect", "logo")
    err = capsys.readouterr().err
    assert rc == ExitCode.CONFIG and "which the manifest reads" in err, err
    assert _tree(tmp_path) == before  # the user's mask, and nothing written


@pytest.mark.parametrize("where", ["images", "manifest folder", "inside images"])
def test_an_output_over_the_inputs_is_refused(tmp_path, tiny_detect_models, capsys, where):
    src = tmp_path / "in"
    (src / "img").mkdir(parents=True)
    (src / "img" / "a.png").write_bytes(_png(photo(40, 40, 1)))
    m = _manifest(src / "manifest.parquet", ["a"], ["img/a.png"])
    out = {"images": src / "img", "manifest folder": src,
           "inside images": src / "img" / "sub"}[where]  # fmt: skip
    before = _tree(tmp_path)
    rc = _detect(m, out, tiny_detect_models, "--detect", "logo")
    err = capsys.readouterr().err
    assert rc == ExitCode.CONFIG and "which the manifest reads" in err, err
    assert _tree(tmp_path) == before


def test_non_empty_outputs_detect_did_not_make(tmp_path, tiny_detect_models, capsys):
    """Refused unless --allow-non-empty-output, and then only when none of detect's names is
    there; a `run` output is refused; a rerun into detect's own output replaces its files."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(_png(photo(40, 48, 2)))
    m = _manifest(src / "m.parquet", ["a"], ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc = _detect(m, out, tiny_detect_models, "--detect", "logo")
    assert rc == ExitCode.CONFIG and "is not empty" in capsys.readouterr().err
    assert _tree(out) == {"notes.txt": b"mine"}

    (out / "masks").mkdir()
    (out / "masks" / "a.png").write_bytes(b"user's mask")
    rc = _detect(m, out, tiny_detect_models, "--detect", "logo", "--allow-non-empty-output")
    assert rc == ExitCode.CONFIG and "'masks'" in capsys.readouterr().err
    assert (out / "masks" / "a.png").read_bytes() == b"user's mask"
    (out / "masks" / "a.png").unlink()
    (out / "masks").rmdir()

    rc = _detect(m, out, tiny_detect_models, "--detect", "logo", "--allow-non-empty-output")
    assert rc == ExitCode.OK
    assert (out / "notes.txt").read_text() == "mine" and (out / MARKER).is_file()
    assert json.loads((out / MARKER).read_text())["command"] == "detect"
    rc = _detect(m, out, tiny_detect_models, "--detect", "watermark")  # its own: a rerun
    assert rc == ExitCode.OK
    assert json.loads((out / "detect.json").read_text())["queries"] == ["watermark"]

    run_out = tmp_path / "run-out"
    run_out.mkdir()
    (run_out / "_BATCH_INPAINT").write_text("{}")  # what `run` marks its outputs with
    rc = _detect(m, run_out, tiny_detect_models, "--detect", "logo", "--allow-non-empty-output")
    assert rc == ExitCode.CONFIG and "`batch-inpaint run` output" in capsys.readouterr().err
    assert _tree(run_out) == {"_BATCH_INPAINT": b"{}"}


# -- 2. extreme images detect; a row the detector fails on fails alone ------------------------
def test_extreme_images_detect_and_a_failing_row_fails_alone(tmp_path, tiny_detect_models,
                                                             capsys):  # fmt: skip
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    images = {
        "one": _png(rng.integers(0, 256, (1, 1, 3), np.uint8)),
        "tall": _png(rng.integers(0, 256, (5000, 1, 3), np.uint8)),
        "wide": _png(rng.integers(0, 256, (10, 60000, 3), np.uint8)),
        "gray": _png(photo(40, 50, 3)[:, :, 0], "L"),
        "rgba": _png(np.dstack([photo(40, 50, 4), np.full((40, 50), 200, np.uint8)]), "RGBA"),
        "ok": _png(photo(64, 80, 5)),
    }
    for name, data in images.items():
        (src / f"{name}.png").write_bytes(data)
    ids = [*images, "too-long", "missing"]
    files = [f"{n}.png" for n in images] + ["ok.png", str(src / "nope.png")]
    # more query tokens than the detector's text input: the model fails on this row alone
    long = ",".join(f"thing{i:03d}" for i in range(60))
    m = _manifest(src / "m.parquet", ids, files, detect=[None] * len(images) + [long, None])
    out = tmp_path / "out"
    rc = _detect(m, out, tiny_detect_models, "--detect", "logo", "--batch-size", "8")
    captured = capsys.readouterr()
    assert rc == ExitCode.OK, captured.err
    assert "Traceback" not in captured.err and "Loading weights" not in captured.err
    assert "channel dimension is ambiguous" not in captured.err
    assert "8 rows: " in captured.out and "2 errors" in captured.out
    rows = {r["id"]: r for r in Manifest.read(str(out / "manifest.parquet"))}
    for name in images:  # every image of the failed batch detected after the split
        row = rows[name]
        assert row["detections"] is not None, row["detect_note"]
        assert not (row["detect_note"] or "").startswith("error"), row["detect_note"]
        h, w = np.asarray(Image.open(src / f"{name}.png")).shape[:2]
        for d in row["detections"]:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        if row["mask"]:
            assert np.asarray(Image.open(row["mask"])).shape == (h, w)
    note = rows["too-long"]["detect_note"]
    assert note.startswith("error (detect): row 'too-long': ") and "failed" in note, note
    note = rows["missing"]["detect_note"]
    assert note.startswith("error (not_found): row 'missing': image "), note
    assert note.count(str(src / "nope.png")) == 1, note  # the path once


class _FailsOnThin(BoxesDetector):
    """Known boxes, and a RuntimeError (not an InpaintError) on any image 1 px wide."""

    def _detect(self, images, queries, threshold, max_detections):
        if any(im.shape[1] == 1 for im in images):
            raise RuntimeError("boom on a thin image")
        return super()._detect(images, queries, threshold, max_detections)


def test_any_exception_of_a_batch_splits_it(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(_png(photo(40, 40, 6)))
    (src / "thin.png").write_bytes(_png(photo(40, 2, 7)[:, :1].copy()))
    (src / "b.png").write_bytes(_png(photo(30, 50, 8)))
    m = _manifest(src / "m.parquet", ["a", "thin", "b"], ["a.png", "thin.png", "b.png"])
    provider = MaskProvider(_FailsOnThin([Detection("logo", 0.9, (2, 2, 20, 20))]))
    summary = detect_manifest(Manifest.read(str(m)), str(tmp_path / "out"), provider, ["logo"],
                              batch_size=3, log=lambda _: None)  # fmt: skip
    assert summary["counts"] == {"rows": 3, "found": 2, "nothing_found": 0, "error": 1,
                                 "no_queries": 0}  # fmt: skip
    rows = {r["id"]: r for r in Manifest.read(summary["manifest"])}
    assert rows["thin"]["detect_note"] == (
        "error (detect): row 'thin': the detector failed: RuntimeError: boom on a thin image"
    )
    assert rows["a"]["mask"] and rows["b"]["mask"]


def test_the_detector_and_segmenter_take_thin_and_tiny_images(tiny_detector, tiny_segmenter):
    rng = np.random.default_rng(1)
    for shape in [(1, 1, 3), (5000, 1, 3), (1, 5000, 3), (10, 60000, 3), (9, 80, 3)]:
        im = rng.integers(0, 256, shape, np.uint8)
        h, w = shape[:2]
        (dets,) = tiny_detector.detect([im], [["logo"]], 0.0, max_detections=5)
        for d in dets:
            assert 0 <= d.box[0] < d.box[2] <= w and 0 <= d.box[1] < d.box[3] <= h
        (masks,) = tiny_segmenter.segment([im], [[[0, 0, w, h], [0, 0, w / 2, h]]])
        assert [m.shape for m in masks] == [(h, w), (h, w)] and masks[0].dtype == bool


# -- 3. --detect repeats; python -m ----------------------------------------------------------
def test_repeated_detect_flags_add_up(tmp_path, tiny_detect_models):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(_png(photo(64, 64, 9)))
    m = _manifest(src / "m.parquet", ["a"], ["a.png"])
    out = tmp_path / "out"
    rc = main(["detect", "--manifest", str(m), "--output", str(out), "--detector", "none",
               "--text-detector", tiny_detect_models["text-detector"], "--threshold", "0",
               "--device", "cpu", "--detect", "text", "--detect", "caption,subtitles"])  # fmt: skip
    assert rc == ExitCode.OK
    assert json.loads((out / "detect.json").read_text())["queries"] == [
        "text", "caption", "subtitles",
    ]  # fmt: skip
    (row,) = Manifest.read(str(out / "manifest.parquet"))
    assert {d["label"] for d in row["detections"]} == {"text", "caption", "subtitles"}


def test_python_dash_m_runs_the_command():
    res = subprocess.run([sys.executable, "-m", "batch_inpaint", "make-tiny-model", "--help"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0 and "--kind" in res.stdout and "run --detect" in res.stdout
