"""A model, detect or verify actor killed every time it works on one row (as the host's OOM killer
or Ray's memory monitor would) on local Ray: the job finishes in bounded time, that row is an
`out_of_memory` error row, every other row is ok, and the terminal said what happened while it
happened."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.detect.base import BoxesDetector, Detection
from batch_inpaint.detect.provider import MaskProvider
from batch_inpaint.job.run import run_job
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.vocab import ErrorKind, ExitCode
from tests.fixtures_ray import local_dataset, manifest_bytes, png, sample_image

pytestmark = pytest.mark.slow


class _KillsOn(OpenCVInpainter):
    """OpenCV, except that a call holding the prompt `kill me` kills its process at once, every
    time; each death is counted in a file so the test sees how many there were."""

    def __init__(self, deaths: str):
        super().__init__()
        self.deaths = deaths

    def inpaint(self, images, masks, params, prompts, negative_prompts, seeds):
        if "kill me" in prompts:
            with open(self.deaths, "a") as f:
                f.write(f"{len(images)}\n")
            os._exit(1)
        return super().inpaint(images, masks, params, prompts, negative_prompts, seeds)


def _kills_on(deaths: str, ctx) -> _KillsOn:
    return _KillsOn(deaths)


def test_a_row_that_always_kills_its_actor_ends_as_out_of_memory(ray_local, tmp_path):
    manifest, rows = local_dataset(tmp_path / "in", 12)
    rows[5]["prompt"] = "kill me"
    manifest.write_bytes(manifest_bytes(rows))
    out, deaths = tmp_path / "out", tmp_path / "deaths"
    said: list[str] = []
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv", batch_size=4)
    t0 = time.time()
    summary = run_job(cfg, echo=said.append,
                      inpainter_factory=functools.partial(_kills_on, str(deaths)))  # fmt: skip
    took = time.time() - t0
    batches = [int(x) for x in deaths.read_text().split()]
    # two whole-batch deaths, then two deaths on the row alone; then it is given up
    assert batches == [4, 4, 1, 1], batches
    meta = {r["id"]: r for r in pq.read_table(out / "metadata").to_pylist()}
    assert len(meta) == 12
    bad = meta[rows[5]["id"]]
    assert (bad["status"], bad["error_kind"]) == ("error", ErrorKind.OUT_OF_MEMORY.value)
    assert {r["status"] for i, r in meta.items() if i != rows[5]["id"]} == {"ok"}
    # transient: no _SUCCESS, the next run redoes it
    assert not summary["success"] and not (out / "_SUCCESS").exists()
    assert summary["error_rate"]["transient"] == pytest.approx(1 / 12, abs=1e-4)
    notes = [s for s in said if "model actor died" in s]
    # said while it happened (polled every 2 s, so a short-lived start may go unseen)
    assert any("on a batch of 8 rows" in s and "batch retried" in s for s in notes), said
    assert any("given up: an out_of_memory error row" in s for s in notes), said
    assert not [p for p in Path(out / "metadata").iterdir() if p.name.startswith("_attempt")]
    assert took < 180, f"{took:.0f} s: the retries are not bounded"


def test_max_error_rate_end_to_end_exits_4(ray_local, tmp_path):
    from batch_inpaint.cli import job_exit_status

    manifest, rows = local_dataset(tmp_path / "in", 8)
    for r in rows[:4]:
        (manifest.parent / r["image"]).write_bytes(b"undecodable")
    out = tmp_path / "out"
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv", max_error_rate=0.2)
    summary = run_job(cfg, echo=lambda *_: None)
    assert job_exit_status(summary) == ExitCode.ERROR_RATE
    assert not (out / "_SUCCESS").exists()
    assert "max_error_rate 0.2" in (out / "run.json").read_text()


POISON = (1, 2, 3)  # the top-left pixel of the image that kills the detector's process


class _DetectorDiesOn(BoxesDetector):
    """Known boxes, except that a call holding the poison image kills its process at once, every
    time, in one stage: `detect` (the job's threshold, 0.5) or `verify` (threshold 0). The
    poison pixel is outside the box, so the output keeps it for verify to see."""

    def __init__(self, deaths: str, stage: str):
        super().__init__([Detection("watermark", 0.9, (10.0, 8.0, 30.0, 28.0))])
        self.deaths, self.stage = deaths, stage

    def _detect(self, images, queries, threshold, max_detections):
        stage = "verify" if threshold == 0.0 else "detect"
        if stage == self.stage and any(tuple(im[0, 0]) == POISON for im in images):
            with open(self.deaths, "a") as f:
                f.write(f"{len(images)}\n")
            os._exit(1)
        return super()._detect(images, queries, threshold, max_detections)


def _dies_on(deaths: str, stage: str, ctx) -> MaskProvider:
    return MaskProvider(_DetectorDiesOn(deaths, stage), threshold=0.5)


@pytest.mark.parametrize("stage", ["detect", "verify"])
def test_a_row_that_always_kills_its_detector_ends_as_out_of_memory(ray_local, tmp_path, stage):
    (tmp_path / "in").mkdir()
    rows = []
    for i in range(12):
        image = sample_image(64, 48, i)
        if i == 5:
            image[0, 0] = POISON
        (tmp_path / "in" / f"d{i:02d}.png").write_bytes(png(image))
        rows.append({"id": f"d{i:02d}", "image": f"in/d{i:02d}.png"})
    (tmp_path / "manifest.parquet").write_bytes(manifest_bytes(rows))
    out, deaths = tmp_path / "out", tmp_path / "deaths"
    said: list[str] = []
    cfg = JobConfig(manifest=str(tmp_path / "manifest.parquet"), output=str(out),
                    backend="opencv", detect=["watermark"], verify=True, detect_batch_size=4)  # fmt: skip
    summary = run_job(cfg, echo=said.append,
                      provider_factory=functools.partial(_dies_on, str(deaths), stage))  # fmt: skip
    # two whole-batch deaths, then two deaths on the row alone; then it is given up
    assert [int(x) for x in deaths.read_text().split()] == [4, 4, 1, 1]
    meta = {r["id"]: r for r in pq.read_table(out / "metadata").to_pylist()}
    assert len(meta) == 12
    bad = meta["d05"]
    assert (bad["status"], bad["error_kind"]) == ("error", ErrorKind.OUT_OF_MEMORY.value)
    worker = {"detect": "the detector's worker", "verify": "the verifier's worker"}[stage]
    assert "'d05'" in bad["error"] and f"{worker} died 2 times" in bad["error"], bad["error"]
    if stage == "verify":  # the output was made: it stays, named, for review
        assert (out / bad["output"]).is_file()
    others = [r for i, r in meta.items() if i != "d05"]
    assert {r["status"] for r in others} == {"ok"}
    assert all(r["residual_score"] is not None and r["mask_used"] for r in others)
    assert not summary["success"] and not (out / "_SUCCESS").exists()  # transient: redone next
    notes = [s for s in said if f"{stage} actor died" in s]
    assert any("given up: an out_of_memory error row" in s for s in notes), said
    assert not [p for p in Path(out / "metadata").iterdir() if p.name.startswith("_attempt")]
