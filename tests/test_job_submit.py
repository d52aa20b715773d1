"""`ray job submit` of jobs/inpaint.py to a real `ray start --head` cluster with token auth: the way
the job reaches a production cluster. The cluster is this module's own (fixtures_ray.ray_head)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.fixtures_ray import REPO, local_dataset, ray_cli, sample_image

pytestmark = pytest.mark.slow


def test_ray_job_submit_runs_the_job_on_a_token_auth_cluster(ray_head, tmp_path):
    manifest, rows = local_dataset(tmp_path / "data", 3, split="train")
    out = tmp_path / "out"
    cmd = [
        ray_cli(), "job", "submit", "--address", ray_head.dashboard, "--working-dir", ".",
        "--", "python", "jobs/inpaint.py", "--manifest", str(manifest), "--output", str(out),
        "--backend", "opencv", "--flush-rows", "2",
    ]  # fmt: skip
    env = {**ray_head.env, "BATCH_INPAINT_PROGRESS_BARS": "0"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    logs = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, logs
    assert "succeeded" in proc.stdout.lower(), logs

    # The job wrote a complete, verified output.
    assert (out / "_SUCCESS").is_file(), logs
    summary = json.loads((out / "run.json").read_text())
    assert summary["success"] and summary["counts"] == {"ok": 3, "error": 0, "skipped": 0}
    meta = pq.read_table(out / "metadata").to_pylist()
    assert sorted(r["id"] for r in meta) == [r["id"] for r in rows]
    assert {r["split"] for r in meta} == {"train"}  # pass-through column
    for i, r in enumerate(sorted(meta, key=lambda r: r["id"])):
        data = (out / "images" / f"{r['id']}.png").read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        got = np.asarray(Image.open(io.BytesIO(data)))
        assert got.shape == sample_image(64, 48, i).shape
    # An unauthenticated client is refused: the token is what lets the submit through.
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    denied = subprocess.run(
        [ray_cli(), "job", "list", "--address", ray_head.dashboard],
        env=no_token,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert denied.returncode != 0
