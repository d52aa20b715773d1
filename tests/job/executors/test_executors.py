"""The two executors over one pipeline: `local` (in process, no Ray) and `ray` (Ray Data) write
the same result rows and the same bytes, on local folders and on S3 (moto); the local path never
imports Ray; `auto` picks one by what the run needs; a cluster that can't be reached leaves a new
output unwritten."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job import executors, pipeline
from batch_inpaint.job.run import run_job
from tests.fixtures_ray import REPO, local_dataset, manifest_bytes
from tests.fixtures_s3 import DUMMY_KEY, DUMMY_SECRET, s3_client
from tests.job.executors.test_ray_job import (
    build_mixed,
    check_invariants,
    check_outputs,
    check_pass_through,
    config,
    mixed_local,
)

# Columns that differ between any two runs: when and how long.
TIMING = {"finished_at", "prepare_s", "model_s", "write_s", "detect_s", "verify_s"}


def _rows(table) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k not in TIMING} for r in table.to_pylist()}


class S3:
    """A bucket on the moto server, with the environment a run reads its credentials from."""

    def __init__(self, endpoint: str, bucket: str, monkeypatch):
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                    "AWS_ENDPOINT_URL_S3", "RAY_ADDRESS"):  # fmt: skip
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        self.endpoint, self.bucket = endpoint, bucket
        self.client = s3_client(endpoint)
        self.client.create_bucket(Bucket=bucket)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [o["Key"] for p in pages for o in p.get("Contents", [])]

    def mixed(self):
        mixed = build_mixed(lambda key, data: self.put(f"in/{key}", data), f"s3://{self.bucket}/in")
        self.put("in/manifest.parquet", manifest_bytes(mixed.rows))
        return f"s3://{self.bucket}/in/manifest.parquet", mixed


@pytest.mark.slow
@pytest.mark.parametrize("where", ["files", "s3"])
def test_local_and_ray_write_the_same_rows_and_bytes(where, ray_local, tmp_path, request):
    """The mixed manifest (every kind of error row, so no error-rate limit) through both, from
    local files and on S3 (moto): the same result rows, the same image bytes, and each run keeps
    every invariant of the job."""
    if where == "s3":
        s3 = S3(request.getfixturevalue("s3_server"), "both-executors",
                request.getfixturevalue("monkeypatch"))  # fmt: skip
        manifest, mixed = s3.mixed()
        extra = {"endpoint_url": s3.endpoint}
    else:
        manifest, mixed = mixed_local(tmp_path)
        manifest, extra = str(manifest), {}
    got = {}
    for name in ("local", "ray"):
        out = f"s3://{s3.bucket}/{name}/" if where == "s3" else str(tmp_path / name)
        cfg = config(manifest=manifest, output=out, backend="opencv", executor=name,
                     max_error_rate=None, **extra)  # fmt: skip
        echo: list[str] = []
        summary = run_job(cfg, echo=echo.append)
        assert f"batch-inpaint: executor {name} (--executor)" in echo
        if where == "s3":
            (part,) = s3.keys(f"{name}/metadata/")
            meta = pq.read_table(io.BytesIO(s3.read(part)))
            images = {k.rsplit("/", 1)[1]: s3.read(k) for k in s3.keys(f"{name}/images/")}
        else:
            meta = pq.read_table(Path(out) / "metadata")
            images = {p.name: p.read_bytes() for p in (Path(out) / "images").iterdir()}
        check_invariants(mixed, meta.to_pylist(), summary)
        got[name] = (_rows(meta), images)
    assert got["local"][0] == got["ray"][0]
    assert got["local"][1] == got["ray"][1] and len(got["local"][1]) == 4


def test_local_on_s3_keeps_the_contract_and_resumes(s3_server, tiny_model_dir, monkeypatch):
    """The tiny diffusers checkpoint over the mixed manifest on S3, in process: every row once,
    outputs decode with unmasked pixels kept, pass-through columns, no secret written; a second
    run has nothing to do and starts nothing."""
    s3 = S3(s3_server, "local-executor", monkeypatch)
    manifest, mixed = s3.mixed()
    cfg = config(manifest=manifest, output=f"s3://{s3.bucket}/out/", backend="tiny",
                 model=str(tiny_model_dir), endpoint_url=s3_server, executor="local",
                 max_error_rate=None)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"], summary["problems"]
    keys = s3.keys("out/")
    (part,) = [k for k in keys if k.startswith("out/metadata/")]
    meta = pq.read_table(io.BytesIO(s3.read(part))).to_pylist()
    check_invariants(mixed, meta, summary)
    check_outputs(mixed, meta, lambda uri: s3.read(uri.removeprefix(f"s3://{s3.bucket}/")
                                                   if uri.startswith("s3://") else f"out/{uri}"))  # fmt: skip
    check_pass_through(mixed, meta)
    for key in keys:
        for secret in (DUMMY_KEY, DUMMY_SECRET):
            assert secret.encode() not in s3.read(key), key
    echo: list[str] = []
    again = run_job(cfg, echo=echo.append)
    assert again["rows_this_run"] == 0 and again["success"]
    assert not [s for s in echo if s.startswith("batch-inpaint: executor")]  # none started


def _run_blocked(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`batch-inpaint ARGS` in a process where `import ray` fails, as where Ray isn't installed."""
    code = ("import sys; sys.modules['ray'] = None; from batch_inpaint.cli import main; "
            "rc = main(sys.argv[1:]); assert 'ray' not in [m.split('.')[0] for m in sys.modules "
            "if sys.modules[m] is not None], 'ray was imported'; sys.exit(rc)")  # fmt: skip
    env = {**(env or os.environ), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_the_local_executor_runs_without_ray(tmp_path):
    manifest, rows = local_dataset(tmp_path / "in", 5)
    out = tmp_path / "out"
    got = _run_blocked(["run", "--manifest", str(manifest), "--output", str(out),
                        "--backend", "opencv"])  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr
    assert "executor local" in got.stdout and "SUCCESS - 5 ok" in got.stdout
    assert json.loads((out / "run.json").read_text())["counts"]["ok"] == 5
    assert len(list((out / "images").iterdir())) == len(rows)


def test_executor_ray_without_ray_says_what_to_install_and_writes_nothing(tmp_path):
    manifest, _ = local_dataset(tmp_path / "in", 2)
    out = tmp_path / "out"
    got = _run_blocked(["run", "--manifest", str(manifest), "--output", str(out),
                        "--backend", "opencv", "--executor", "ray"])  # fmt: skip
    assert got.returncode == 2, got.stdout + got.stderr
    assert "Please install batch-inpaint[ray]" in got.stderr
    assert not out.exists()


def test_an_unreachable_ray_address_exits_2_before_anything_is_written(tmp_path):
    """A cluster that can't be joined is found before the output is claimed: a new output gets
    no _BATCH_INPAINT, no job.json (nothing but the lock, taken and given back)."""
    manifest, _ = local_dataset(tmp_path / "in", 2)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ADDRESS="127.0.0.1:9", PYTHONPATH=str(REPO))
    got = subprocess.run([sys.executable, "-m", "batch_inpaint", "run", "--manifest",
                          str(manifest), "--output", str(out), "--backend", "opencv"],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert got.returncode == 2, got.stdout + got.stderr
    assert "cannot join the Ray cluster at '127.0.0.1:9' (from RAY_ADDRESS)" in got.stderr
    assert not out.exists() or list(out.rglob("*")) == []


AUTO = """
import os
from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.job import executors as ex
cpu = {"backend": "opencv"}
assert ex.choose(JobConfig(**cpu), 20)[0] == "local"
assert ex.choose(JobConfig(**cpu), ex.LOCAL_MAX_ROWS)[0] == "local"
many, why = ex.choose(JobConfig(**cpu), ex.LOCAL_MAX_ROWS + 1)
assert many == ("ray" if ex.ray_installed() else "local") and "rows to do" in why, why
assert ex.choose(JobConfig(address="10.0.0.1:6379", **cpu), 1) == (
    "ray", "--address 10.0.0.1:6379 names a cluster")
assert ex.choose(JobConfig(executor="local", **cpu), 1)[0] == "local"
try:
    ex.check_executor(JobConfig(executor="local", address="10.0.0.1:6379"))
    raise AssertionError("local with --address was accepted")
except ConfigError as e:
    assert "drop --address" in str(e)
os.environ["RAY_ADDRESS"] = "10.0.0.1:6379"
assert ex.choose(JobConfig(**cpu), 1) == ("ray", "RAY_ADDRESS names a cluster")
print("auto ok")
"""


def test_auto_picks_ray_for_a_cluster_or_many_rows_else_local():
    """In a fresh process (pytest's may hold an initialized Ray, which auto would use)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}
    got = subprocess.run([sys.executable, "-c", AUTO], env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert got.returncode == 0 and "auto ok" in got.stdout, got.stderr


@pytest.mark.slow
def test_auto_uses_the_ray_this_process_initialized(ray_local):
    assert executors.choose(JobConfig(backend="opencv"), 1) == (
        "ray", "Ray is already initialized in this process")  # fmt: skip


def test_both_executors_read_one_pipeline():
    """The pipeline is described once: which steps, in which order, which hold a model."""
    from batch_inpaint.job.driver.resources import DetectPlan
    from tests.job.helpers import context

    def names(**kw):
        cfg = JobConfig(backend="opencv", **kw)
        ctx = context(Path("/tmp"), output="")
        detect = DetectPlan(("text",), 0.0) if cfg.detection.detect else None
        return [(s.name, s.pool) for s in pipeline.steps(cfg, ctx, 0.0, detect)]

    assert names(fuse_stages=True) == [("fused", "model")]
    assert names(fuse_stages=False) == [("prepare", None), ("model", "model"), ("finish", None)]
    assert names(fuse_stages=True, detect="text", verify=True) == [
        ("detect", "detect"), ("fused", "model"), ("verify", "detect")]  # fmt: skip
