"""The job under faults: a driver killed part-way, a model actor that dies mid-batch, two
incremental runs into one output, a stale lock. Each ends with every manifest row recorded exactly
once and no stray object under images/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job.lock import LockedError, OutputLock
from batch_inpaint.job.ray_job import run_job
from batch_inpaint.storage.store import Storage
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
    # A stray object (e.g. from an earlier run in another format): the rerun must remove it.
    (out / "images" / "stray.jpg").write_bytes(b"not listed in any metadata")

    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="tiny",
                    model=str(tiny_model_dir), device="cpu", steps=4)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"], summary["problems"]
    assert summary["rows_this_run"] == len(ids) - len(done_before)
    assert summary["orphans_removed"] >= 1
    _assert_complete(out, ids)


def test_actor_that_dies_mid_batch_is_restarted_and_every_row_finishes(ray_local, tmp_path):
    manifest, rows = local_dataset(tmp_path / "in", 6)
    out = tmp_path / "out"
    ray_local.crash_marker.unlink()  # arm: the next ModelStage call kills its actor's process
    try:
        cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv")
        summary = run_job(cfg, echo=lambda *_: None)
    finally:
        crashed = ray_local.crash_marker.exists()
        ray_local.crash_marker.touch()  # disarm for the tests after this one
    assert crashed, "the crash hook never fired: the test proved nothing"
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
        assert rc == 2, err
        assert "_LOCK is held by" in err and "another run into this output" in err
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


# ------------------------------------------------------------------------------------------------
# OutputLock on its own (local storage; no Ray)
def test_lock_refuses_a_live_lock_and_takes_a_stale_one(tmp_path):
    storage = Storage()
    a = OutputLock(storage, str(tmp_path), ttl_s=60)
    b = OutputLock(storage, str(tmp_path), ttl_s=60)
    a.acquire()
    with pytest.raises(LockedError, match="held by .* for \\d+ s more"):
        b.acquire()
    b.release()  # not the owner: must not remove a's lock
    assert (tmp_path / "_LOCK").is_file()
    a.release()
    assert not (tmp_path / "_LOCK").exists()
    b.acquire()  # free again
    body = json.loads((tmp_path / "_LOCK").read_text())
    body["expires_at"] = time.time() - 1
    (tmp_path / "_LOCK").write_text(json.dumps(body))
    a.acquire()  # b died: its lock expired
    assert json.loads((tmp_path / "_LOCK").read_text())["owner"] == a.token
    b.release()
    assert json.loads((tmp_path / "_LOCK").read_text())["owner"] == a.token


class _PausingStorage(Storage):
    """Real local storage; `pause_after_read` holds the caller after it has read the lock, so a
    test can let another run act in between (the race two scheduled runs can hit)."""

    def __init__(self):
        super().__init__()
        self.pause_after_read: threading.Event | None = None
        self.read_done = threading.Event()

    def read_bytes(self, uri, start=None, end=None):
        data = super().read_bytes(uri, start, end)
        if self.pause_after_read is not None and uri.endswith("_LOCK"):
            self.read_done.set()
            self.pause_after_read.wait(10)
            self.pause_after_read = None
        return data


def test_two_runs_racing_for_a_stale_lock_never_both_hold_it(tmp_path):
    stale = {"owner": "dead:1:x", "acquired_at": 1.0, "expires_at": time.time() - 60}
    (tmp_path / "_LOCK").write_text(json.dumps(stale))
    slow_storage = _PausingStorage()
    slow_storage.pause_after_read = go = threading.Event()
    slow = OutputLock(slow_storage, str(tmp_path), ttl_s=60)
    fast = OutputLock(Storage(), str(tmp_path), ttl_s=60)
    outcome: dict[str, object] = {}

    def run_slow():
        try:
            slow.acquire()
            outcome["slow"] = "held"
        except LockedError as exc:
            outcome["slow"] = exc

    t = threading.Thread(target=run_slow)
    t.start()
    assert slow_storage.read_done.wait(10)  # slow has seen the stale lock ...
    fast.acquire()  # ... fast takes it over meanwhile ...
    go.set()  # ... then slow goes on with what it saw
    t.join(20)
    holders = [n for n, lk in (("slow", slow), ("fast", fast)) if lk.held]
    assert holders == ["fast"], f"both runs think they hold the lock: {outcome}"
    assert isinstance(outcome["slow"], LockedError)
    assert json.loads((tmp_path / "_LOCK").read_text())["owner"] == fast.token


def test_held_lock_is_renewed_before_it_expires(tmp_path):
    """A run longer than lock_ttl_s keeps its lock: the expiry moves forward while it is held."""
    storage = Storage()
    out = str(tmp_path / "out")
    lock = OutputLock(storage, out, ttl_s=0.6)
    lock.acquire()
    try:
        first = json.loads(storage.read_bytes(lock.uri))["expires_at"]
        time.sleep(1.0)  # past the first expiry: only renewal keeps it held
        later = json.loads(storage.read_bytes(lock.uri))["expires_at"]
        assert later > first
        with pytest.raises(LockedError):
            OutputLock(storage, out, ttl_s=0.6).acquire()
    finally:
        lock.release()
    assert not storage.exists(lock.uri)
