"""Which Ray cluster a run uses, and no processes left behind when its driver is SIGKILLed.

Every test runs its drivers as subprocesses (this pytest process may hold the session's Ray
instance) under their own RAY_TMPDIR and HOME, so `ray_current_cluster`, sessions and tokens stay
in a temp dir, and only processes this test started are stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_inpaint.job.executors.cluster import connect, sweep
from tests.fixtures_ray import (
    REPO,
    _free_port,
    _kill_group,
    _pids_mentioning,
    _short_tmpdir,
    ray_cli,
)

DRIVER = """
import json, os, sys, time
mode = sys.argv[1]
from batch_inpaint.job.executors.cluster import connect
c = connect(None, logging_level="WARNING",
            **({} if os.environ.get("RAY_ADDRESS") else {"num_cpus": 1, "include_dashboard": False}))
import ray
from ray._private.state import jobs
info = {"pid": os.getpid(), "source": c.source, "gcs": c.address, "session": c.session_dir,
        "node": c.node_id, "job_pids": [j["DriverPid"] for j in jobs()]}
print(json.dumps(info), flush=True)
if mode == "sleep":
    time.sleep(120)  # bounded: a driver whose test died still ends, and its watchdog cleans up
c.close()
print(json.dumps({"watchdog_exit": c._watchdog.poll() if c._watchdog else None}), flush=True)
"""


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_TMPDIR=str(tmp),  # where `ray start` records ray_current_cluster and sessions live
        HOME=str(tmp / "home"),  # Ray's auth token goes under ~/.ray
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def _run_driver(tmp: Path, mode: str, **extra: str) -> tuple[list[dict], str]:
    r = subprocess.run(
        [sys.executable, "-c", DRIVER, mode],
        env=_env(tmp, **extra),
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    return lines, r.stdout


@pytest.fixture
def tmp_ray():
    tmp = Path(_short_tmpdir())
    (tmp / "home").mkdir()
    try:
        yield tmp
    finally:
        # Anything of ours a failed test left behind (agents rename their command line).
        for session in (tmp / "ray").glob("session_2*"):
            sweep(str(session), None, timeout=5)
        for pid in _pids_mentioning(str(tmp)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def other_cluster(tmp_ray):
    """An unrelated `ray start --head` cluster, as a user may have running on the machine."""
    cmd = [
        ray_cli(), "start", "--head", "--block", f"--port={_free_port()}", "--num-cpus=1",
        "--include-dashboard=false", f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", "--disable-usage-stats",
    ]  # fmt: skip
    log = open(tmp_ray / "ray-start.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        cmd, env=_env(tmp_ray), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address_file = tmp_ray / "ray" / "ray_current_cluster"
    try:
        deadline = time.time() + 60
        while not (address_file.is_file() and address_file.read_text().strip()):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start did not come up: {(tmp_ray / 'ray-start.log').read_text()}")
            time.sleep(0.5)
        yield address_file.read_text().strip()
    finally:
        _kill_group(proc, str(tmp_ray))
        log.close()


@pytest.mark.slow
def test_without_address_a_run_starts_its_own_instance_and_joins_only_ray_address(
    tmp_ray, other_cluster
):
    # other_cluster is recorded in RAY_TMPDIR/ray/ray_current_cluster, which a plain ray.init()
    # (what runs did before) joins.
    (local, closed), out = _run_driver(tmp_ray, "once")
    assert local["source"] == "local" and "private local instance" in out
    assert local["gcs"] != other_cluster
    assert closed["watchdog_exit"] == 0  # the watchdog ends with a normal run

    (joined, _), out = _run_driver(tmp_ray, "once", RAY_ADDRESS=other_cluster)
    assert joined["source"] == "env" and joined["gcs"] == other_cluster
    assert f"joining the cluster at {other_cluster} (from RAY_ADDRESS)" in out
    # The other cluster saw the plain driver and the joining one, never the private run.
    assert joined["pid"] in joined["job_pids"]
    assert local["pid"] not in joined["job_pids"]


def _alive(pid: int, started: str) -> bool:
    """Whether pid is still the same process (start time) and not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == started


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """pid -> (start time, command line) of every live descendant of root."""
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        procs[int(d.name)] = (int(stat[1]), stat[19], cmd)
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, started, cmd) in procs.items():
            if ppid == parent and pid not in found:
                found[pid] = (started, cmd)
                todo.append(pid)
    return found


@pytest.mark.slow
def test_sigkilled_driver_leaves_no_process_of_its_instance(tmp_ray):
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "sleep"],
        env=_env(tmp_ray),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_ray,
    )
    try:
        seen = []
        for line in proc.stdout:  # its JSON line: connect() has returned
            if line.startswith("{"):
                break
            seen.append(line)
        else:
            pytest.fail(f"driver exited {proc.wait()} before connecting: {seen}")
        info = json.loads(line)
        assert info["source"] == "local"
        # Wait for Ray's agents: they are what outlived a SIGKILLed driver.
        deadline = time.time() + 30
        while True:
            procs = _descendants(proc.pid)
            titles = " ".join(cmd for _, cmd in procs.values())
            if "DashboardAgent" in titles and "RuntimeEnvAgent" in titles:
                break
            assert time.time() < deadline, f"Ray's agents never started: {titles}"
            time.sleep(0.5)
        assert "cluster.py" in titles  # the watchdog

        proc.kill()
        proc.wait()
        deadline = time.time() + 15
        left: list[str] = []
        while time.time() < deadline:
            left = [cmd.strip()[:100] for pid, (t, cmd) in procs.items() if _alive(pid, t)]
            left += [f"{p} names {tmp_ray}" for p in _pids_mentioning(info["session"])]
            if not left:
                break
            time.sleep(0.5)
        assert not left, f"still running 15 s after the driver's SIGKILL: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


UNREACHABLE = """
import os, sys
from batch_inpaint.errors import ConfigError
from batch_inpaint.job.executors.cluster import connect
for address in (None, os.environ["RAY_ADDRESS"]):
    try:
        connect(address, echo=lambda line: None)
    except ConfigError as e:
        print(e)
    else:
        sys.exit("joined?")
"""


def test_an_address_where_nothing_listens_fails_fast_naming_its_origin(tmp_ray):
    address = f"127.0.0.1:{_free_port()}"
    r = subprocess.run(
        [sys.executable, "-c", UNREACHABLE],
        env=_env(tmp_ray, RAY_ADDRESS=address),
        capture_output=True,
        text=True,
        timeout=60,  # ray.init alone would wait for minutes
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    from_env, from_flag = r.stdout.strip().splitlines()
    assert f"{address!r} (from RAY_ADDRESS)" in from_env and "unset RAY_ADDRESS" in from_env
    assert f"{address!r} (from --address)" in from_flag and "drop --address" in from_flag
    assert not list((tmp_ray / "ray").glob("session_*"))  # no local instance started instead


@pytest.mark.slow
def test_ray_already_initialized_here_is_used_as_it_is(ray_local):
    import ray

    lines: list[str] = []
    with connect("127.0.0.1:1", echo=lines.append) as cluster:
        assert cluster.source == "existing" and cluster.address == ray_local.address
    assert ray.is_initialized()  # close() leaves an instance it did not start
    assert lines == [
        f"batch-inpaint: Ray: using the instance already running in this process ({ray_local.address})"
    ]
