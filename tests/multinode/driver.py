"""Multi-node scenarios of the job on one machine, each as a subprocess of the tests (pytest holds
its own Ray instance): `python -m tests.multinode.driver cluster|autoscale|initial_pool --work DIR`.

`cluster`: a head (1 CPU, no GPU), a CPU worker node and two worker nodes that advertise one GPU
each (the model runs on CPU: device cpu, gpus_per_actor 1, so Ray's placement is real) from
`ray.cluster_utils.Cluster`, reused by three runs of `run_job --address`:

- worker_loss: two model actors (placement: GPU nodes only; CPU stages wherever there is a
  CPU), and the CPU worker node removed once metadata parts exist;
- actor_node_loss: one model actor; its node removed once parts exist, so it must come back on
  the other GPU node.

`initial_pool`: a head and two 1-GPU nodes; the pool's size unset, so it starts at two actors.

`autoscale`: see autoscale.py. Prints `MULTINODE_SESSION <session dir> <temp dir>` as soon as the
Ray session exists (the test stops what is left of it whatever happens) and
`MULTINODE_RESULT <json>` at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.fixtures_ray import local_dataset
from tests.multinode.models import read_records, recording

SESSION, RESULT = "MULTINODE_SESSION", "MULTINODE_RESULT"


def quiet_ray_address_file() -> None:
    """cluster_utils writes and, at shutdown, deletes /tmp/ray/ray_current_cluster, which a plain
    `ray.init()` of any other process on this machine follows: neither, here."""
    import ray._common.utils
    import ray._private.utils

    ray._private.utils.write_ray_address = lambda *a, **k: None
    ray._common.utils.reset_ray_address = lambda *a, **k: None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parts(out: Path) -> list[Path]:
    return sorted((out / "metadata").glob("part-*.parquet")) if (out / "metadata").is_dir() else []


def rows_in_parts(out: Path) -> int:
    n = 0
    for p in parts(out):
        with contextlib.suppress(Exception):  # a part being renamed into place
            n += pq.ParquetFile(p).metadata.num_rows
    return n


class Fault(threading.Thread):
    """Waits until `min_rows` result rows are in metadata parts, then calls `act()` once; records
    how many rows were done then and whether the run had already ended."""

    def __init__(self, out: Path, min_rows: int, act, timeout_s: float = 120.0):
        super().__init__(name="fault", daemon=True)
        self.out, self.min_rows, self.act, self.timeout_s = out, min_rows, act, timeout_s
        self.info: dict = {"fired": False}

    def run(self) -> None:
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            done = rows_in_parts(self.out)
            if done >= self.min_rows:
                ended = (self.out / "_SUCCESS").exists() or (self.out / "run.json").exists()
                self.info.update(fired=True, rows_done=done, run_had_ended=ended)
                try:
                    self.info.update(self.act() or {})
                except Exception as e:  # noqa: BLE001 - reported to the test, which fails
                    self.info["error"] = f"{type(e).__name__}: {e}"
                self.info["rows_done_after"] = rows_in_parts(self.out)
                return
            time.sleep(0.05)
        self.info["error"] = f"never saw {self.min_rows} rows in metadata parts"


def outcome(out: Path, ids: list[str], summary: dict) -> dict:
    """What the test asserts on: result ids (with repeats), statuses, images, markers."""
    meta = pq.read_table(out / "metadata").to_pylist()
    images = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*"))
    return {
        "ids": sorted(ids),
        "result_ids": sorted(r["id"] for r in meta),
        "statuses": sorted({r["status"] for r in meta}),
        "errors": [r["error"] for r in meta if r["error"]][:5],
        "images": images,
        "success_file": (out / "_SUCCESS").is_file(),
        "success": summary.get("success"),
        "counts": summary.get("counts"),
        "problems": summary.get("problems"),
    }


def run(work: Path, name: str, address: str, *, rows: int, actors: int | None, delay_s: float,
        fault=None, min_rows: int = 8) -> dict:  # fmt: skip
    """One run_job on the cluster at `address`; `fault()` fires once `min_rows` rows are done.
    `actors`: the model pool's min and max size; None leaves both unset (the job sizes it)."""
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.run import run_job

    root = work / name
    manifest, manifest_rows = local_dataset(root / "in", rows)
    out, record = root / "out", root / "records"
    record.mkdir(parents=True)
    size = {"min_actors": actors, "max_actors": actors} if actors else {}
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv", device="cpu",
                    gpus_per_actor=1, **size, batch_size=4, cpus_per_actor=1, flush_rows=4,
                    address=address)  # fmt: skip
    thread = Fault(out, min_rows, fault) if fault else None
    if thread:
        thread.start()
    t0 = time.time()
    lines: list[str] = []
    summary = run_job(cfg, echo=lines.append,
                      inpainter_factory=functools.partial(recording, str(record), delay_s))  # fmt: skip
    if thread:
        thread.join(timeout=60)
    result = outcome(out, [r["id"] for r in manifest_rows], summary)
    result.update(started=t0, seconds=round(time.time() - t0, 1), echo=lines[-20:],
                  fault=thread.info if thread else None, model=read_records(str(record)))  # fmt: skip
    return result


def task_nodes() -> dict[str, list[str]]:
    """Node ids the tasks of each name ran on (Ray Data names them after their stages, e.g.
    "MapBatches(prepare_batch)"), from the task events the GCS keeps."""
    import ray

    where: dict[str, set[str]] = {}
    for ev in ray._private.state.state._get_all_task_events():
        name, node = ev.task_info.name, ev.state_updates.node_id.hex()
        if name and node:
            where.setdefault(name, set()).add(node)
    return {k: sorted(v) for k, v in where.items()}


def cluster_scenarios(work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    quiet_ray_address_file()
    temp = tempfile.mkdtemp(prefix="bi-mn-", dir="/tmp")  # short: Ray's socket paths
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "temp_dir": temp, "include_dashboard": False,
        "dashboard_port": free_port()})  # fmt: skip
    print(f"{SESSION} {cluster.head_node.get_session_dir_path()} {temp}", flush=True)
    result: dict = {}
    try:
        cpu = cluster.add_node(num_cpus=2, num_gpus=0)
        gpu = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        result["start_s"] = round(time.time() - t0, 1)
        result["nodes"] = {"head": cluster.head_node.node_id, "cpu": cpu.node_id,
                           "gpu": [g.node_id for g in gpu]}  # fmt: skip
        addr = cluster.address

        def remove_cpu_node() -> dict:
            cluster.remove_node(cpu)
            return {"removed": cpu.node_id}

        # Two actors (one per GPU node) and the CPU worker node removed mid-run: placement and
        # node loss in one run, asserted apart.
        result["worker_loss"] = run(work, "worker_loss", addr, rows=48, actors=2, delay_s=0.3,
                                    fault=remove_cpu_node)  # fmt: skip
        time.sleep(1.5)  # workers report task events every second
        result["worker_loss"]["tasks"] = task_nodes()

        by_id = {g.node_id: g for g in gpu}

        def remove_actor_node() -> dict:
            loaded = [r for r in read_records(str(work / "actor_node_loss" / "records"))
                      if r["event"] == "load"]  # fmt: skip
            node = by_id[loaded[-1]["node"]]  # the one actor's node (a GPU node)
            cluster.remove_node(node)
            return {"removed": node.node_id}

        result["actor_node_loss"] = run(work, "actor_node_loss", addr, rows=48, actors=1,
                                        delay_s=0.3, fault=remove_actor_node)  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    result["total_s"] = round(time.time() - t0, 1)
    return result


def initial_pool_scenario(work: Path) -> dict:
    """A head of 1 CPU and two nodes of 1 CPU and 1 (fake) GPU each; one run with the pool's
    size left unset, whose model calls take 1.5 s, so a block (2 calls) takes 3 s."""
    import ray
    from ray.cluster_utils import Cluster

    quiet_ray_address_file()
    temp = tempfile.mkdtemp(prefix="bi-ip-", dir="/tmp")
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "temp_dir": temp, "include_dashboard": False,
        "dashboard_port": free_port()})  # fmt: skip
    print(f"{SESSION} {cluster.head_node.get_session_dir_path()} {temp}", flush=True)
    result: dict = {}
    try:
        gpu = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        result["start_s"] = round(time.time() - t0, 1)
        result["nodes"] = {"head": cluster.head_node.node_id, "gpu": [g.node_id for g in gpu]}
        result["run"] = run(work, "initial_pool", cluster.address, rows=32, actors=None,
                            delay_s=1.5, fault=lambda: {"first_part_t": time.time()},
                            min_rows=1)  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    result["total_s"] = round(time.time() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["cluster", "autoscale", "initial_pool"])
    ap.add_argument("--work", required=True)
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.scenario == "cluster":
        result = cluster_scenarios(work)
    elif args.scenario == "initial_pool":
        result = initial_pool_scenario(work)
    else:
        from tests.multinode.autoscale import autoscale_scenario

        result = autoscale_scenario(work)
    print(f"{RESULT} {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
