"""The job under faults: a driver killed part-way, a model actor that dies mid-batch, two
incremental runs into one output, a stale lock. Each ends with every manifest row recorded exactly
once and no stray object under images/."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job.run import run_job
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.vocab import ExitCode
from tests.fixtures_ray import REPO, local_dataset, manifest_bytes, png, sample_image

pytestmark = pytest.mark.slow


def _meta(out: Path) -> list[dict]:
    return pq.read_table(out / "metadata").to_pylist()


def _assert_complete(out: Path, ids: list[str]) -> None:
    """Exactly one result row per id, one compacted file, each image present and nothing else."""
    meta = _meta(out)
    got = [r["id"] for r in meta]
    assert sorted(got) == sorted(ids), f"{len(got)} rows for {len(ids)} ids"
    files = [p.name for p in (out / "metadata").iterdir() if not p.name.startswith(".")]
    assert len(files) == 1 and files[0].startswith("results-"), files  # compacted
    assert {r["status"] for r in meta} == {"ok"}
    images = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*"))
    assert images == sorted(f"{i}.png" for i in ids), "orphan or missing objects under images/"
    assert (out / "_SUCCESS").is_file()


def _wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not pred():
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"driver exited {proc.returncode} before {what}:\n{out[-4000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the kill takes all of it
    )


# ------------------------------------------------------------------------------------------------
def test_killed_run_resumes_with_every_row_once(ray_local, tiny_model_dir, tmp_path):
    manifest, rows = local_dataset(tmp_path / "in", 32)
    out = tmp_path / "out"
    ids = [r["id"] for r in rows]
    args = [sys.executable, "jobs/inpaint.py", "--manifest", str(manifest), "--output", str(out),
            "--backend", "tiny", "--model", str(tiny_model_dir), "--device", "cpu",
            "--steps", "4", "--flush-rows", "1"]  # fmt: skip
    proc = _start(args, ray_local.driver_env())  # joins the session's Ray: no second start-up
    try:
        parts = lambda: list((out / "metadata").glob("part-*.parquet"))  # noqa: E731
        _wait_for(lambda: out.joinpath("metadata").is_dir() and parts(), proc, "a metadata part")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "_SUCCESS").exists(), "the run finished before it could be killed"
    done_before = {r["id"] for p in parts() for r in pq.read_table(p).to_pylist()}
    assert 0 < len(done_before) < len(ids)
    # An image of one of its ids in another format is the job's own leftover: the rerun removes
    # it. An object no id maps to was not written by the job: it stays, counted.
    (out / "images" / f"{ids[0]}.webp").write_bytes(b"an earlier run's other format")
    (out / "images" / "stray.jpg").write_bytes(b"not the job's")

    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="tiny",
                    model=str(tiny_model_dir), device="cpu", steps=4)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"], summary["problems"]
    assert summary["rows_this_run"] == len(ids) - len(done_before)
    assert summary["orphans_removed"] == 1 and summary["unknown_objects_kept"] == 1
    assert (out / "images" / "stray.jpg").read_bytes() == b"not the job's"
    (out / "images" / "stray.jpg").unlink()
    _assert_complete(out, ids)


class _DiesOnce(OpenCVInpainter):
    """OpenCV, except that the first call in any process (an O_EXCL marker file decides) kills
    that process at once, as a GPU fault or an OOM kill would."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def inpaint(self, *args, **kwargs):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return super().inpaint(*args, **kwargs)
        os._exit(1)


def _dies_once(marker: str, ctx) -> _DiesOnce:
    """The injected model factory: module level, so Ray can ship it to the actors."""
    return _DiesOnce(marker)


def test_actor_that_dies_mid_batch_is_restarted_and_every_row_finishes(ray_local, tmp_path):
    manifest, rows = local_dataset(tmp_path / "in", 6)
    out = tmp_path / "out"
    marker = tmp_path / "crashed"
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv")
    summary = run_job(
        cfg, echo=lambda *_: None, inpainter_factory=functools.partial(_dies_once, str(marker))
    )
    assert marker.exists(), "the injected model never crashed: the test proved nothing"
    assert summary["success"] and summary["counts"] == {"ok": 6, "error": 0, "skipped": 0}
    _assert_complete(out, [r["id"] for r in rows])


# ------------------------------------------------------------------------------------------------
def test_concurrent_incremental_runs_one_is_refused(ray_local, tmp_path, capsys):
    manifest, rows = local_dataset(tmp_path / "in", 16)
    out = tmp_path / "out"
    common = ["--manifest", str(manifest), "--output", str(out), "--backend", "opencv",
              "--incremental", "--flush-rows", "4"]  # fmt: skip
    exe = str(Path(sys.executable).with_name("batch-inpaint"))
    first = _start([exe, "run", *common], ray_local.driver_env())
    try:
        _wait_for((out / "_LOCK").is_file, first, "the first run's lock")
        from batch_inpaint.cli import main

        rc = main(["run", *common])  # the second, overlapping run
        err = capsys.readouterr().err
        assert first.poll() is None, "the first run ended before the second started"
        assert rc == ExitCode.LOCKED, err
        assert "_LOCK: another run into this output is in progress: held by host" in err
        first_out = first.communicate(timeout=300)[0].decode(errors="replace")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    assert first.returncode == 0, first_out[-4000:]
    assert not (out / "_LOCK").exists(), "the lock outlived its run"
    run = json.loads((out / "run.json").read_text())
    assert run["rows_this_run"] == 16  # all done by the first run, none twice
    _assert_complete(out, [r["id"] for r in rows])

    # A lock left by a run that died (expired) is taken over; incremental does only new rows.
    lock = {"owner": "dead-host:1:abcdef", "acquired_at": 1.0, "expires_at": time.time() - 60}
    (out / "_LOCK").write_text(json.dumps(lock))
    new = [{"id": f"new{i}", "image": f"images/new{i}.png", "mask_boxes": [[2.0, 2.0, 30.0, 20.0]]}
           for i in range(3)]  # fmt: skip
    for r in new:
        (manifest.parent / r["image"]).write_bytes(png(sample_image(64, 48, 100 + len(r["id"]))))
    manifest.write_bytes(manifest_bytes(rows + new))
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv", incremental=True)
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"] and summary["rows_this_run"] == 3
    assert not (out / "_LOCK").exists()
    _assert_complete(out, [r["id"] for r in rows + new])
