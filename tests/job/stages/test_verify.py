"""Verify: VerifyStage on tables in process (known boxes from a BoxesDetector over outputs and
masks written to a folder), then one job on the session's local Ray with detect, verify and
max_residual, its report and a rerun."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batch_inpaint.detect.base import BoxesDetector, Detection, Detector
from batch_inpaint.detect.provider import MaskProvider
from batch_inpaint.job.stages.verify import VerifyStage, residual
from tests.fixtures_ray import box_mask, png, sample_image
from tests.job.helpers import context

W, H = 64, 48
MASK_BOX = (10, 8, 30, 28)  # x0, y0, x1, y1 of every test mask


def _row(root: Path, rid: str, status="ok", mask=True, output=True, **extra) -> dict:
    """A finished row whose output and (final, hard) mask are written under root/out."""
    out = root / "out"
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    row = {"id": rid, "image": f"images/{rid}.png", "status": status, "error_kind": None,
           "error": None, "output": None, "mask_used": None, "note": None,
           "residual_score": None, "detect": None, **extra}  # fmt: skip
    (root / "images").mkdir(exist_ok=True)
    (root / "images" / f"{rid}.png").write_bytes(png(sample_image(W, H, 2)))
    if output:
        (out / "images" / f"{rid}.png").write_bytes(png(sample_image(W, H, 1)))
        row["output"] = f"images/{rid}.png"
    if mask:
        (out / "masks" / f"{rid}.png").write_bytes(png(box_mask(W, H, MASK_BOX)))
        row["mask_used"] = f"masks/{rid}.png"
    return row


def _table(rows: list[dict]) -> pa.Table:
    types = {"residual_score": pa.float64()}
    return pa.table({k: pa.array([r[k] for r in rows], types.get(k, pa.string()))
                     for k in rows[0]})  # fmt: skip


def _stage(root: Path, detections, detector: Detector | None = None, **settings) -> VerifyStage:
    ctx = context(root, detect=["watermark", "logo"], verify=True, **settings)
    provider = MaskProvider(detector or BoxesDetector(detections))
    return VerifyStage(ctx, provider_factory=lambda _ctx: provider)


def _by_id(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


INSIDE = Detection("watermark", 0.8, (12.0, 10.0, 20.0, 16.0))
BESIDE = Detection("watermark", 0.95, (40.0, 30.0, 60.0, 45.0))  # no mask pixel in it
LOGO = Detection("logo", 0.4, (25.5, 20.2, 50.0, 40.0))  # overlaps the mask's corner


def test_scores_are_the_best_detection_touching_the_mask(tmp_path):
    stage = _stage(tmp_path, [INSIDE, BESIDE, LOGO])
    rows = [_row(tmp_path, "both"), _row(tmp_path, "logo-only", detect="logo"),
            _row(tmp_path, "none", detect="face")]  # fmt: skip
    got = _by_id(stage(_table(rows)))
    # the better detection beside the mask (0.95) is not a residual: those pixels were not touched
    assert got["both"]["residual_score"] == pytest.approx(0.8)
    assert got["both"]["note"] == "verify: 'watermark' at 0.800 inside the mask"
    assert got["logo-only"]["residual_score"] == pytest.approx(0.4)  # the row's own queries
    assert got["none"]["residual_score"] == 0.0
    assert got["none"]["note"] == "verify: nothing inside the mask"
    assert {r["status"] for r in got.values()} == {"ok"}  # no max_residual: scores only


def test_rows_verify_does_not_check_keep_a_null_score(tmp_path):
    stage = _stage(tmp_path, [INSIDE])
    rows = [
        _row(tmp_path, "skipped", status="skipped", mask=False, note="nothing found for logo"),
        _row(tmp_path, "error", status="error", output=False, error_kind="decode",
             error="row 'error': bad bytes"),
        _row(tmp_path, "own-mask", mask=False),  # no detection ran: its mask is the user's
    ]  # fmt: skip
    table = _table(rows)
    got = stage(table)
    assert got.column("residual_score").to_pylist() == [None, None, None]
    assert got.select(["status", "error_kind", "error", "note"]).equals(
        table.select(["status", "error_kind", "error", "note"])
    )
    # no queries at all (none for the job, none in the row): nothing to look for
    bare = VerifyStage(
        context(tmp_path, verify=True), lambda _: MaskProvider(BoxesDetector([INSIDE]))
    )
    assert bare(_table([_row(tmp_path, "q")])).column("residual_score").to_pylist() == [None]


def test_max_residual_turns_rows_above_it_into_residual_errors(tmp_path):
    stage = _stage(tmp_path, [INSIDE, LOGO], max_residual=0.5)
    rows = [
        _row(tmp_path, "wm", note="found 'watermark' 0.80"),
        _row(tmp_path, "lg", detect="logo"),
    ]
    got = _by_id(stage(_table(rows)))
    wm, lg = got["wm"], got["lg"]
    assert (wm["status"], wm["error_kind"]) == ("error", "residual")
    for words in ("'wm'", "'watermark'", "0.800", "max_residual 0.5", "images/wm.png"):
        assert words in wm["error"]
    assert wm["output"] == "images/wm.png" and (tmp_path / "out/images/wm.png").is_file()
    assert wm["residual_score"] == pytest.approx(0.8)
    assert wm["note"].startswith("found 'watermark' 0.80; verify: ")  # detection's note kept
    assert (lg["status"], lg["residual_score"]) == ("ok", pytest.approx(0.4))
    # at the limit is not above it
    at = _stage(tmp_path, [INSIDE], max_residual=0.8)(_table([_row(tmp_path, "at")]))
    assert at.column("status").to_pylist() == ["ok"]


class FailsOn(Detector):
    """The detector fails on any batch holding an image with this red value at (0, 0)."""

    def __init__(self, red: int):
        self.red = red

    def _detect(self, images, queries, threshold, max_detections):
        if any(int(im[0, 0, 0]) == self.red for im in images):
            raise RuntimeError("CUDA error: device-side assert")
        return [[INSIDE] for _ in images]


def test_a_verifier_failure_fails_only_its_row_and_keeps_its_output(tmp_path):
    rows = [_row(tmp_path, f"r{i}") for i in range(3)]
    bad = np.array(sample_image(W, H, 1))
    bad[0, 0, 0] = (int(bad[0, 0, 0]) + 1) % 256
    (tmp_path / "out/images/r1.png").write_bytes(png(bad))
    rows.append(_row(tmp_path, "gone"))
    (tmp_path / "out/images/gone.png").unlink()  # the output can't be read back
    stage = _stage(tmp_path, [], detector=FailsOn(int(bad[0, 0, 0])))
    got = _by_id(stage(_table(rows)))
    assert [got[r]["residual_score"] for r in ("r0", "r2")] == [0.8, 0.8]
    assert (got["r1"]["status"], got["r1"]["error_kind"]) == ("error", "detect")
    assert "'r1'" in got["r1"]["error"] and "device-side assert" in got["r1"]["error"]
    assert got["r1"]["output"] == "images/r1.png" and got["r1"]["residual_score"] is None
    assert (got["gone"]["status"], got["gone"]["error_kind"]) == ("error", "not_found")
    assert "'gone'" in got["gone"]["error"] and "--retry-errors" in got["gone"]["error"]


def test_a_mask_of_another_size_is_a_row_error(tmp_path):
    row = _row(tmp_path, "odd")
    (tmp_path / "out/masks/odd.png").write_bytes(png(box_mask(W // 2, H, (0, 0, 10, 10))))
    got = _stage(tmp_path, [INSIDE])(_table([row])).to_pylist()[0]
    assert (got["status"], got["error_kind"]) == ("error", "mask")
    assert "32x48" in got["error"] and "64x48" in got["error"]


def test_the_stage_module_imports_neither_ray_nor_torch():
    import subprocess
    import sys

    code = ("import sys, batch_inpaint.job.stages.verify; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_overlap_is_any_mask_pixel_the_box_touches():
    mask = np.zeros((10, 10), bool)
    mask[4:6, 4:6] = True  # pixels 4 and 5 on both axes
    assert residual([Detection("x", 0.5, (0.0, 0.0, 4.0, 4.0))], mask).score == 0.0  # ends at 4
    assert residual([Detection("x", 0.5, (0.0, 0.0, 4.1, 4.1))], mask).score == 0.5  # touches 4
    assert residual([Detection("x", 0.5, (5.9, 5.9, 9.0, 9.0))], mask).score == 0.5  # touches 5
    assert residual([Detection("x", 0.5, (6.0, 0.0, 9.0, 9.0))], mask).score == 0.0
    best = residual([Detection("a", 0.3, (0, 0, 10, 10)), Detection("b", 0.6, (4, 4, 5, 5))], mask)
    assert (best.label, best.score) == ("b", 0.6)


def test_the_report_shows_the_highest_residuals_and_counts_those_above_the_limit(tmp_path):
    from batch_inpaint.job.driver import results
    from batch_inpaint.job.report import summary as report

    detections = [INSIDE, LOGO, Detection("face", 0.1, (0, 0, 12, 10))]
    stage = _stage(tmp_path, detections, max_residual=0.5)
    rows = [_row(tmp_path, "wm"), _row(tmp_path, "lg", detect="logo"),
            _row(tmp_path, "fc", detect="face"), _row(tmp_path, "mine", mask=False)]  # fmt: skip
    table = stage(_table(rows))
    r = report.residual_summary(table, 0.5)
    assert r == {"verified": 3, "highest": 0.8, "mean": pytest.approx((0.8 + 0.4 + 0.1) / 3,
                 abs=1e-6), "max_residual": 0.5, "over_max_residual": 1,
                 "judged_earlier": 0}  # fmt: skip
    summary = {**results.summarize(_timed(table), 0.0, 1.0, 4), "residuals": r, "success": True}
    assert "3 row(s) verified, highest residual 0.800" in report.summary_text(summary, None)
    assert "1 above max_residual 0.5" in report.summary_text(summary, None)
    page = report.render(summary, table, stage.ctx.config, stage.ctx.storage, 4)
    section = page.split('id="residuals"', 1)[1].split("<h2>", 1)[0]
    cards = section.split('class="card"')[1:]
    assert [c.split('data-id="', 1)[1].split('"', 1)[0] for c in cards] == ["wm", "lg", "fc"]
    assert "&#39;watermark&#39; at 0.800 inside the mask" in cards[0]  # jinja2's escape of '
    assert "above max_residual" in cards[0] and "above max_residual" not in cards[1]
    assert all(c.count("<img") == 3 for c in cards)  # input | mask | output, the error row's too
    assert 'id="n-residual">above max_residual 0.5: 1<' in page
    assert 'data-kind="residual"' in page  # and the residual error among the errors


def _timed(table: pa.Table) -> pa.Table:
    """The stage-time columns summarize() adds up, which a hand-made table lacks."""
    for name in ("prepare_s", "model_s", "write_s"):
        table = table.append_column(name, pa.array([0.1] * table.num_rows, pa.float64()))
    return table


# ------------------------------------------------------------------------------------------------
# The job on local Ray: detect (known boxes) -> inpaint (OpenCV) -> verify, max_residual, rerun.
WATERMARK = Detection("watermark", 0.9, (10.0, 8.0, 30.0, 28.0))
FAINT_LOGO = Detection("logo", 0.2, (34.0, 10.0, 50.0, 30.0))


def known_boxes(ctx) -> MaskProvider:
    """The job's provider in both stages (picklable: module level). BoxesDetector returns its
    boxes whatever the pixels, so verify finds on the output what detect found on the input."""
    return MaskProvider(BoxesDetector([WATERMARK, FAINT_LOGO]))


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "local"])  # both executors (job/executors/)
def test_job_verifies_turns_residuals_into_errors_reports_them_and_resumes(
    executor, ray_local, tmp_path
):
    import json

    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.run import run_job
    from tests.fixtures_ray import manifest_bytes

    (tmp_path / "in").mkdir()
    rows = []
    for i, (rid, queries) in enumerate([("wm-1", "watermark"), ("wm-2", "watermark"),
                                        ("logo", "logo"), ("own", None)]):  # fmt: skip
        (tmp_path / "in" / f"{rid}.png").write_bytes(png(sample_image(W, H, i)))
        rows.append({"id": rid, "image": f"in/{rid}.png", "detect": queries, "mask": None})
    (tmp_path / "in/own-mask.png").write_bytes(png(box_mask(W, H, (2, 2, 12, 12))))
    rows[-1]["mask"] = "in/own-mask.png"  # no queries: its own mask, not verified
    (tmp_path / "manifest.parquet").write_bytes(manifest_bytes(rows))
    out = tmp_path / "out"
    settings = dict(manifest=str(tmp_path / "manifest.parquet"), output=str(out),
                    backend="opencv", verify=True, max_residual=0.5, executor=executor)  # fmt: skip
    # default CPU shares: detect, verify and model actors and a read task fit the 2 test CPUs
    summary = run_job(JobConfig(**settings), echo=lambda *_: None, provider_factory=known_boxes)

    assert summary["success"] and summary["counts"] == {"ok": 2, "error": 2, "skipped": 0}
    assert summary["errors_by_kind"] == {"residual": 2}
    assert summary["residuals"]["verified"] == 3 and summary["residuals"]["over_max_residual"] == 2
    assert json.loads((out / "run.json").read_text())["residuals"] == summary["residuals"]
    got = {r["id"]: r for r in _results(out)}
    for rid in ("wm-1", "wm-2"):
        r = got[rid]
        assert (r["status"], r["error_kind"], r["residual_score"]) == ("error", "residual", 0.9)
        assert f"'{rid}'" in r["error"] and "'watermark' at 0.900" in r["error"]
        assert (out / r["output"]).is_file()  # kept for review, not removed as an orphan
        assert r["mask_used"] == f"masks/{rid}.png" and (out / r["mask_used"]).is_file()
    assert (got["logo"]["status"], got["logo"]["residual_score"]) == ("ok", 0.2)
    assert (got["own"]["status"], got["own"]["residual_score"]) == ("ok", None)
    # time per stage: detect and verify for the rows that ran them, null for the one that didn't
    assert all(got[r]["detect_s"] > 0 and got[r]["verify_s"] > 0 for r in ("wm-1", "logo"))
    assert got["own"]["detect_s"] is None and got["own"]["verify_s"] is None
    assert summary["stage_seconds_total"]["verify_s"] > 0
    page = (out / "report.html").read_text()
    assert "verify (read the output, detect again)" in page.split('id="timings"', 1)[1]
    section = page.split('id="residuals"', 1)[1].split("<h2>", 1)[0]
    assert section.count('class="card"') == 3 and section.count("<img") == 9
    assert 'id="n-residual">above max_residual 0.5: 2<' in page

    # a rerun has nothing to do: residual rows are errors of the output, kept until asked
    again = run_job(JobConfig(**settings), echo=lambda *_: None, provider_factory=known_boxes)
    assert again["rows_this_run"] == 0 and again["counts"] == summary["counts"]
    assert all((out / got[r]["output"]).is_file() for r in ("wm-1", "wm-2"))
    # --retry-errors with a higher limit makes and verifies them again; the others stay done
    done = {r["id"]: r["finished_at"] for r in _results(out)}
    redo = run_job(JobConfig(**{**settings, "max_residual": 0.95, "retry_errors": True}),
                   echo=lambda *_: None, provider_factory=known_boxes)  # fmt: skip
    assert redo["rows_this_run"] == 2 and redo["counts"] == {"ok": 4, "error": 0, "skipped": 0}
    final = {r["id"]: r for r in _results(out)}
    assert final["wm-1"]["residual_score"] == 0.9 and final["wm-1"]["error"] is None
    assert final["logo"]["finished_at"] == done["logo"]
    # `batch-inpaint report` rebuilds the section from the results (run.json of an older version)
    from batch_inpaint.job.report import summary as report

    older = {
        k: v for k, v in json.loads((out / "run.json").read_text()).items() if k != "residuals"
    }
    (out / "run.json").write_text(json.dumps(older))
    (out / "report.html").unlink()
    assert report.regenerate(str(out))["summary"]["residuals"]["verified"] == 3
    assert 'id="residuals"' in (out / "report.html").read_text()


def _results(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "metadata").to_pylist()


def test_a_higher_limit_counts_only_scores_above_it_and_names_rows_judged_earlier():
    """Residual error rows of an earlier, lower limit stay errors (finished work is not redone
    silently); the summary says they were judged earlier instead of counting them as above."""
    from batch_inpaint.job.report.summary import residual_summary, residual_text

    table = pa.table({"residual_score": [0.9, 0.95, 0.2, None],
                      "error_kind": ["residual", "residual", None, None]})  # fmt: skip
    r = residual_summary(table, 0.92)
    assert (r["over_max_residual"], r["judged_earlier"]) == (1, 1)
    assert "1 above max_residual 0.92; 1 residual error row(s) were judged" in residual_text(r)
    near = residual_summary(pa.table({"residual_score": [0.999985], "error_kind": [None]}), 0.99999)
    # not rounded up past the limit, as "highest residual 1.000; 0 above 0.99999" was
    text = residual_text(near)
    assert "highest residual 0.999985, mean 1.000; 0 above max_residual 0.99999" in text
