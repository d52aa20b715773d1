"""A real run over Parquet shards (`batch-inpaint run`, a subprocess) killed with SIGKILL once
its first shards are written, then run again: no half shard under a final name at any time, and
after the rerun every shard whole with every row once (read back with `datasets`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.fixtures_ray import REPO
from tests.job.io.shard_data import check_parquet_output, write_hf_shards

SHARDS, ROWS = 5, 4
W, H = 640, 480  # big masks on big images: ~0.3 s of Telea a row, so the run lasts seconds


def _run(src: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "batch_inpaint", "run", "--manifest", str(src), "--output",
           str(out), "--backend", "opencv", "--executor", "local", "--flush-rows", "2"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _whole(data: Path) -> list[str]:
    """Names of the shards under data/, each read whole (a half shard fails to read)."""
    names = []
    for p in sorted(data.iterdir()) if data.exists() else []:
        if p.name.startswith("."):
            continue  # a temp file of a write cut short: never a final name
        assert pq.read_metadata(p).num_rows == ROWS, p
        names.append(p.name)
    return names


def test_sigkill_mid_run_then_rerun_leaves_every_shard_whole_and_every_row_once(tmp_path):
    shards = write_hf_shards(tmp_path / "in", SHARDS, ROWS, w=W, h=H)
    out, log = tmp_path / "out", tmp_path / "run.log"
    proc = _run(tmp_path / "in", out, log)
    try:
        deadline = time.time() + 180
        while not _whole(out / "data"):
            assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()}"
            assert time.time() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    written = _whole(out / "data")
    assert 0 < len(written) < SHARDS, "killed too late to test anything"
    rerun = _run(tmp_path / "in", out, tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()
    assert _whole(out / "data") == [p.name for p in shards]
    summary = json.loads((out / "run.json").read_text())
    # the shards written before the kill are not redone (rows of one whose results were not
    # flushed yet may be: its rows are redone and the shard written again, whole)
    assert summary["success"] and summary["rows_this_run"] < SHARDS * ROWS
    by_id = check_parquet_output(shards, out)
    assert len(by_id) == SHARDS * ROWS and {r["status"] for r in by_id.values()} == {"ok"}
