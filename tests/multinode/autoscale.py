"""GPU workers that autoscale from zero, with Ray's fake multi-node provider: a `ray start --head`
(no GPU) whose autoscaler (v1, `provider: fake_multinode`, RAY_FAKE_CLUSTER=1) starts a worker node
advertising one GPU when a model actor asks for one, as a cloud cluster's autoscaler would.

Ray's own `AutoscalingCluster` is not used: its start and shutdown run `ray stop --force`, which
stops every Ray instance on the machine (a test session's, another user's), and it reads
fake_multi_node/example.yaml, which the pip wheel does not ship. The head here gets its own
ports and temp dir, and only its processes are stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GPU_TYPE = "ray.worker.gpu"


def free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are picked (one at a time, the
    kernel may hand the same just-freed port out twice, and `ray start` refuses the pair)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def autoscaling_config(gcs_address: str) -> dict:
    """The fake provider's cluster config: a head of 2 CPUs and no GPU; up to one worker node
    type with 1 CPU and 1 GPU, none at start."""
    return {
        "cluster_name": "bi-fake",
        "max_workers": 1,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,  # else it assumes port 6379
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": 2, "GPU": 0},
                "node_config": {},
                "max_workers": 0,
            },  # fmt: skip
            GPU_TYPE: {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150 * 2**20},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            },  # fmt: skip
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def stop(proc: subprocess.Popen, temp: str) -> None:
    """Stop the head's process group, then every process of ours that names its temp dir (the
    nodes the autoscaler started are children of its monitor, in the same group; this catches
    any that left it)."""
    from tests.fixtures_ray import _kill_group

    _kill_group(proc, temp)


def wait_for_gcs(address: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        time.sleep(0.3)
    raise RuntimeError(f"the head's GCS at {address} did not open within {timeout} s")


def autoscale_scenario(work: Path) -> dict:
    import ray
    import ray._private.services

    from tests.multinode.driver import SESSION, quiet_ray_address_file, run

    quiet_ray_address_file()
    temp = tempfile.mkdtemp(prefix="bi-as-", dir="/tmp")
    ip = ray._private.services.get_node_ip_address()
    port, dash, agent, client, metrics, env_agent = free_ports(6)
    address = f"{ip}:{port}"
    config = Path(temp) / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(address)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # `ray start` turns token auth on by default; this private head is only for this driver.
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="disabled")
    cmd = [
        _ray(), "start", "--head", "--block", f"--port={port}", f"--node-ip-address={ip}",
        f"--autoscaling-config={config}", "--num-cpus=2", "--num-gpus=0",
        f"--temp-dir={temp}", "--include-dashboard=false", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
        "--disable-usage-stats",
    ]  # fmt: skip
    log_path = Path(temp) / "ray-start.log"
    t0 = time.time()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=temp)  # fmt: skip
    result: dict = {}
    try:
        wait_for_gcs(address, proc, log_path)
        session = os.path.realpath(os.path.join(temp, "session_latest"))
        print(f"{SESSION} {session} {temp}", flush=True)
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        nodes = ray.nodes()
        result["start_s"] = round(time.time() - t0, 1)
        result["gpus_at_start"] = ray.cluster_resources().get("GPU", 0)
        result["nodes_at_start"] = [n["NodeID"] for n in nodes if n["Alive"]]
        result["run"] = run(work, "autoscale", address, rows=16, actors=1, delay_s=0.05)
        alive = [n for n in ray.nodes() if n["Alive"]]
        result["nodes_at_end"] = {n["NodeID"]: n["Resources"].get("GPU", 0) for n in alive}
    except Exception as e:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        monitor = _monitor_tail(temp)
        raise RuntimeError(f"{e}\n--- ray start:\n{tail}\n--- monitor:\n{monitor}") from e
    finally:
        ray.shutdown()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        stop(proc, temp)
        shutil.rmtree(temp, ignore_errors=True)
    result["total_s"] = round(time.time() - t0, 1)
    return result


def _monitor_tail(temp: str) -> str:
    logs = Path(temp) / "session_latest" / "logs"
    out = []
    for name in ("monitor.log", "monitor.err", "monitor.out"):
        p = logs / name
        if p.exists():
            out.append(f"[{name}] " + p.read_text(errors="replace")[-2000:])
    return "\n".join(out)
