"""Issue 25's defects 3 and 4, without Ray (the real stages and finalize): colour masks are read
as drawn, suspicious masks are flagged by validate, the dry run and the run (each row's note,
counted in run.json, the summary and the report), every skipped row says why; a run whose rows
mostly fail is FAILED (default max_error_rate), one with some error rows says "finished with
errors", and the three exit differently."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from batch_inpaint.cli import job_exit_status, main
from batch_inpaint.image import masks as M
from batch_inpaint.job.driver import results
from batch_inpaint.job.driver.finalize import RunState, finalize
from batch_inpaint.job.driver.scan import scan_manifest
from batch_inpaint.job.report import summary as report
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.params import MaskOptions
from batch_inpaint.vocab import ExitCode, MaskConcern
from tests.fixtures_ray import manifest_bytes, manifest_table
from tests.job.helpers import context

W, H = 64, 48


def _png(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, "PNG")
    return buf.getvalue()


def _masks() -> dict[str, np.ndarray]:
    """Masks by name: red strokes on black, an inverted one (black = inpaint), an empty one, a
    photo-like grey one, and a plain white-on-black one."""
    red = np.zeros((H, W, 3), np.uint8)
    red[10:20, 8:40, 0] = 255  # pure red: luminance 0.3, below the 0.5 threshold
    inverted = np.full((H, W), 255, np.uint8)
    inverted[20:24, 20:26] = 0
    grey = np.tile(np.linspace(40, 210, W, dtype=np.uint8), (H, 1))
    plain = np.zeros((H, W), np.uint8)
    plain[5:15, 5:15] = 255
    return {"red": red, "inverted": inverted, "empty": np.zeros((H, W), np.uint8),
            "grey": grey, "plain": plain}  # fmt: skip


def _dataset(root: Path, bad_images: int = 0) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for name, mask in _masks().items():
        (root / f"{name}.png").write_bytes(_png(rng.integers(0, 255, (H, W, 3), np.uint8)))
        (root / f"{name}_mask.png").write_bytes(_png(mask))
        rows.append({"id": name, "image": f"{name}.png", "mask": f"{name}_mask.png"})
    for i in range(bad_images):
        (root / f"bad{i}.png").write_bytes(b"not an image")
        rows.append({"id": f"bad{i}", "image": f"bad{i}.png", "mask": "plain_mask.png"})
    (root / "manifest.parquet").write_bytes(manifest_bytes(rows))
    return rows


def _run(root: Path, rows: list[dict], **settings) -> dict:
    ctx = context(root, **settings)
    out = finish_batch(ModelStage(ctx, inpainter=OpenCVInpainter())(
        prepare_batch(manifest_table(rows), ctx)), ctx)  # fmt: skip
    writer = results.MetadataWriter(ctx.storage, ctx.config.output, "run-a", 100, 60.0)
    writer.add(out)
    writer.flush()
    scan = scan_manifest(ctx.storage, ctx.config)
    said: list[str] = []
    summary = finalize(RunState(ctx.config, ctx.storage, scan, "run-a", time.time() - 1,
                                len(rows), said.append))  # fmt: skip
    summary["said"] = said
    return summary


def test_colour_masks_count_any_channel_and_alpha():
    red = _masks()["red"]
    got = M.mask_from_image(_png(red))
    assert got[10:20, 8:40].all() and got.sum() == 10 * 32  # luminance read it as empty
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 1] = 255  # green everywhere, opaque only in a band: transparent = keep
    rgba[30:40, :, 3] = 255
    got = M.mask_from_image(_png(rgba, "RGBA"))
    assert got[30:40].all() and got.sum() == 10 * W
    assert not M.mask_from_image(_png(red), options=MaskOptions(invert=True))[10:20, 8:40].any()


def test_the_run_notes_every_skipped_row_and_counts_suspicious_masks(tmp_path):
    summary = _run(tmp_path, _dataset(tmp_path))
    table, _ = results.read_results(context(tmp_path).storage, str(tmp_path / "out"))
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["red"]["status"] == "ok" and rows["red"]["note"] is None
    assert rows["plain"]["note"] is None
    skipped = [r for r in rows.values() if r["status"] == "skipped"]
    assert [r["id"] for r in skipped] == ["empty"]
    assert all(r["note"] and r["note"].startswith(MaskConcern.EMPTY.value) for r in skipped)
    assert rows["inverted"]["note"].startswith(f"{MaskConcern.COVERS_MOST}: it covers 99%")
    assert MaskConcern.GREY.value in rows["grey"]["note"]
    assert summary["mask_concerns"] == {"empty_mask": 1, "mask_covers_most": 1, "grey_mask": 1}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["mask_concerns"] == summary["mask_concerns"]
    said = "\n".join(summary["said"])
    assert "masks:    empty_mask: 1, mask_covers_most: 1, grey_mask: 1" in said
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="n-suspicious"' in page and "mask_covers_most" in page


def test_validate_and_the_dry_run_flag_suspicious_masks(tmp_path, capsys):
    _dataset(tmp_path / "in")
    manifest = str(tmp_path / "in" / "manifest.parquet")
    assert main(["manifest", "validate", manifest]) == ExitCode.OK  # warnings are not errors
    out = capsys.readouterr().out
    assert "3 suspicious mask(s)" in out
    for rid, kind in (("inverted", "mask_covers_most"), ("empty", "empty_mask"),
                      ("grey", "grey_mask")):  # fmt: skip
        assert any(line.startswith(rid) and kind in line for line in out.splitlines()), out
    assert not any(line.startswith(("red ", "plain ")) for line in out.splitlines())
    # read as the job would with --invert-mask: the inverted one is fine, the others are not
    assert main(["manifest", "validate", manifest, "--invert-mask"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert not any(line.startswith("inverted ") for line in out.splitlines())
    rc = main(["run", "--manifest", manifest, "--output", str(tmp_path / "o"), "--backend",
               "opencv", "--dry-run"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "suspicious masks in the sample" in out and "mask_covers_most" in out


def test_a_run_whose_rows_mostly_fail_is_failed_by_default(tmp_path):
    summary = _run(tmp_path, _dataset(tmp_path, bad_images=6))  # 6 of 11 rows: 55%
    assert summary["error_rate"]["max"] == 0.5 and summary["error_rate"]["exceeded"]
    assert not summary["success"] and job_exit_status(summary) == ExitCode.ERROR_RATE
    assert summary["said"][-1].startswith("batch-inpaint: FAILED - ")
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    top = summary["top_errors"]["decode"]
    assert len(top) == 1 and top[0]["count"] == 6 and top[0]["message"].startswith("image /")


def test_some_errors_finish_with_errors_and_none_succeed(tmp_path):
    summary = _run(tmp_path / "a", _dataset(tmp_path / "a", bad_images=1))
    assert summary["success"] and job_exit_status(summary) == ExitCode.ROW_ERRORS
    head = [s for s in summary["said"] if s.startswith("batch-inpaint:")][-1]
    assert head.startswith("batch-inpaint: FINISHED WITH ERRORS - 4 ok, 1 error, 1 skipped")
    summary = _run(tmp_path / "b", _dataset(tmp_path / "b"))
    assert summary["success"] and job_exit_status(summary) == ExitCode.OK
    assert any(s.startswith("batch-inpaint: SUCCESS - ") for s in summary["said"])
    assert len({ExitCode.OK, ExitCode.ROW_ERRORS, ExitCode.ERROR_RATE, ExitCode.INCOMPLETE}) == 4


def test_top_errors_are_capped_per_kind():
    import pyarrow as pa

    msgs = [f"row 'r{i}': image d/x.png: not a readable image ({i % 7})" for i in range(40)]
    table = pa.table({"status": ["error"] * 40, "error_kind": ["decode"] * 40, "error": msgs})
    top = report.top_errors(table)["decode"]
    assert len(top) == report.TOP_ERRORS and sum(t["count"] for t in top) <= 40
    assert top[0]["count"] == 6 and top[0]["message"].startswith("image d/x.png")
