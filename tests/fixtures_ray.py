"""Ray fixtures and job-test helpers: one local Ray instance for the whole session (starting Ray
costs ~10 s, so every in-process job test shares it), a `ray start --head` cluster with token auth
for `ray job submit`, and small builders for images, masks and manifests.

Fixture names: `ray_local` (a RayLocal: its address, for subprocess drivers), `ray_head` (a
RayHead: address, dashboard URL and env of a token-auth cluster)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.fixtures_s3 import DUMMY_KEY, DUMMY_SECRET

REPO = Path(__file__).resolve().parents[1]


@dataclass
class RayLocal:
    address: str  # GCS address: a subprocess driver joins with RAY_ADDRESS=<address>

    def driver_env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess driver (`batch-inpaint run`, jobs/inpaint.py) that joins
        this instance instead of starting its own."""
        env = {**os.environ, "RAY_ADDRESS": self.address, "BATCH_INPAINT_PROGRESS_BARS": "0"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs, no dashboard) for every job test of the session.

    Its workers get dummy AWS credentials (the moto server accepts any; real workers take theirs
    from the instance or env) through the job's runtime_env, so nothing leaks into this
    process's environment. run_job sees ray.is_initialized() and joins it."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
            runtime_env={
                "env_vars": {
                    "AWS_ACCESS_KEY_ID": DUMMY_KEY,
                    "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
                    "AWS_REGION": "us-east-1",
                }
            },
        )
        started = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield RayLocal(address=ray.get_runtime_context().gcs_address)
    if started:
        ray.shutdown()


# ------------------------------------------------------------------------------------------------
# `ray start --head` with token auth, for `ray job submit`
@dataclass
class RayHead:
    address: str  # GCS address
    dashboard: str  # http://127.0.0.1:<port>, what `ray job submit --address` takes
    env: dict[str, str]  # RAY_AUTH_MODE=token and the token path: for every `ray` client command
    log: Path  # output of `ray start`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


@pytest.fixture(scope="module")
def ray_head():
    """A `ray start --head` cluster of our own (free ports, its own temp dir, and token auth:
    `ray job submit` to a local head needs RAY_AUTH_MODE=token and a token from `ray
    get-auth-token --generate` in the environment of both the head and the client), stopped at
    the end by killing only the process group it started (`ray stop` would stop every Ray on the
    machine, the shared session instance included)."""
    tmp = Path(_short_tmpdir())
    home = tmp / "home"
    home.mkdir()
    ray = ray_cli()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # `--generate` saves the token under ~/.ray: a throwaway HOME keeps the user's own untouched.
    gen = subprocess.run(
        [ray, "get-auth-token", "--generate"],
        env={**base, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    token_path = home / ".ray" / "auth_token"
    if gen.returncode != 0 or not token_path.is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"`ray get-auth-token --generate` failed: {gen.stderr[-2000:]}")
    env = {
        **base,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        # the job's `python` is this interpreter (its venv), as on a cluster built from one image
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")]),
    }
    port, dash = _free_port(), _free_port()
    cmd = [
        ray, "start", "--head", "--block", f"--port={port}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
        f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
        "--num-cpus=2", "--num-gpus=0", f"--temp-dir={tmp / 'ray'}", "--disable-usage-stats",
    ]  # fmt: skip
    log_path = tmp / "ray-start.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_job_api(url, proc, log_path, env, timeout=120)
        yield RayHead(address=f"127.0.0.1:{port}", dashboard=url, env=env, log=log_path)
    finally:
        _kill_group(proc, str(tmp))
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _short_tmpdir() -> str:
    """A short temp dir: Ray's unix socket paths must stay under ~107 characters."""
    return tempfile.mkdtemp(prefix="bi-ray-", dir="/tmp")


def _wait_for_job_api(url: str, proc, log: Path, env: dict, timeout: float) -> None:
    """Until the job API answers an authenticated `ray job list` (the dashboard's HTTP port opens
    before its job module is ready)."""
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}: {log.read_text()[-3000:]}")
        r = subprocess.run(
            [ray_cli(), "job", "list", "--address", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode == 0:
            return
        last = r.stderr[-1000:]
        time.sleep(1)
    raise RuntimeError(f"ray job API at {url} not up after {timeout} s: {last}")


def _kill_group(proc: subprocess.Popen, marker: str) -> None:
    """Stop the cluster we started and nothing else: SIGTERM its process group, SIGKILL what is
    left of it, then any straggler whose command line names our own temp dir (a process that
    left the group), by pid."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    for pid in _pids_mentioning(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(d.name))
    return pids


# ------------------------------------------------------------------------------------------------
# data builders
def sample_image(w: int, h: int, seed: int) -> np.ndarray:
    """A deterministic RGB uint8 image with structure and noise (so every pixel is distinctive)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1)
    noise = rng.integers(0, 40, (h, w, 3))
    return ((base + noise) % 256).astype(np.uint8)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def box_mask(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 0/255 HxW with `box` (x0, y0, x1, y1) white."""
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return m


MANIFEST_TYPES = {
    "id": pa.string(),
    "image": pa.string(),
    "mask": pa.string(),
    "mask_boxes": pa.list_(pa.list_(pa.float64())),
    "num_inference_steps": pa.int64(),
    "prompt": pa.string(),
}


def manifest_table(rows: list[dict]) -> pa.Table:
    """Rows -> Arrow table with the manifest's known column types (other columns: strings)."""
    names: list[str] = []
    for r in rows:
        names += [k for k in r if k not in names]
    return pa.table(
        {n: pa.array([r.get(n) for r in rows], MANIFEST_TYPES.get(n, pa.string())) for n in names}
    )


def manifest_bytes(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(manifest_table(rows), buf)
    return buf.getvalue()


def local_dataset(root: Path, n: int, w: int = 64, h: int = 48, **extra) -> tuple[Path, list]:
    """n good rows (image + mask files under root) and their manifest at root/manifest.parquet;
    returns (manifest path, rows). Masks: a box per row, different per row."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        rid = f"r{i:03d}"
        (root / "images" / f"{rid}.png").write_bytes(png(sample_image(w, h, i)))
        box = (4 + i % 5, 6, w // 2 + i % 7, h // 2 + 3)
        (root / "masks" / f"{rid}.png").write_bytes(png(box_mask(w, h, box)))
        rows.append({"id": rid, "image": f"images/{rid}.png", "mask": f"masks/{rid}.png", **extra})
    path = root / "manifest.parquet"
    path.write_bytes(manifest_bytes(rows))
    return path, rows
