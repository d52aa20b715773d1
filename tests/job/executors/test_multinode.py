"""The job on several Ray nodes of this machine: a worker node lost mid-run, the model actor's node
lost, model actors placed only on nodes that advertise a GPU (the model itself runs on CPU), and
GPU workers autoscaled from zero by Ray's fake multi-node provider.

pytest holds its own Ray instance, so each cluster lives in a subprocess driver
(tests/multinode/driver.py) that prints a JSON result; one cluster serves the two node-loss runs.
Every scenario ends with no process of its Ray session left (checked here, then swept anyway).
"""

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

from batch_inpaint.job.executors.cluster import session_pids, sweep
from tests.fixtures_ray import REPO, _pids_mentioning, local_dataset
from tests.job.driver.test_finalize import _finalize, _stages_into_parts
from tests.multinode.driver import RESULT, SESSION

CLUSTER_TIMEOUT_S = 420  # a 4-node cluster, two runs: 150 s here under heavy load
AUTOSCALE_TIMEOUT_S = 300


def _drive(scenario: str, work: Path, timeout: int) -> dict:
    """Run the driver; return its result with `leaked`: pids of its Ray session still alive a
    few seconds after it ended (then stopped here, so a failure leaks nothing either)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["BATCH_INPAINT_PROGRESS_BARS"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.multinode.driver", scenario, "--work", str(work)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,  # the kill on timeout takes its whole group
    )  # fmt: skip
    timed_out = False
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
    text = out.decode(errors="replace")
    session = temp = None
    for line in text.splitlines():
        if line.startswith(SESSION + " "):
            _, session, temp = line.split()  # the session dir, the cluster's temp dir
    leaked: list[int] = []
    if session:
        deadline = time.time() + 10
        while (leaked := sorted(session_pids(session, None))) and time.time() < deadline:
            time.sleep(0.5)
        sweep(session, None)
        for pid in _pids_mentioning(temp):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)  # the driver's own, left when it was killed
    if timed_out:
        pytest.fail(f"{scenario} driver ran past {timeout} s:\n{text[-6000:]}")
    found = [line for line in text.splitlines() if line.startswith(RESULT + " ")]
    if proc.returncode != 0 or not found:
        pytest.fail(f"{scenario} driver exited {proc.returncode}:\n{text[-6000:]}")
    result = json.loads(found[-1].removeprefix(RESULT + " "))
    result["leaked"] = leaked
    runs = {k: v["seconds"] for k, v in result.items() if isinstance(v, dict) and "seconds" in v}
    print(f"multinode {scenario}: start {result['start_s']} s, runs {runs}, "
          f"total {result['total_s']} s")  # fmt: skip
    return result


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    return _drive("cluster", tmp_path_factory.mktemp("multinode"), CLUSTER_TIMEOUT_S)


def _assert_every_row_once(run: dict) -> None:
    """One ok result row per manifest id, each image present, nothing else under images/."""
    assert run["result_ids"] == run["ids"], f"{len(run['result_ids'])} rows, {len(run['ids'])} ids"
    assert run["statuses"] == ["ok"], run["errors"]
    assert run["images"] == [f"{i}.png" for i in run["ids"]], "orphan or missing under images/"
    assert run["success"] and run["success_file"], run["problems"]


def _assert_fault_mid_run(run: dict) -> None:
    fault = run["fault"]
    assert fault["fired"] and "error" not in fault, fault
    assert 0 < fault["rows_done"] < len(run["ids"]) and not fault["run_had_ended"], fault


# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_worker_node_lost_mid_run_every_row_once(cluster_runs):
    run = cluster_runs["worker_loss"]
    assert run["fault"]["removed"] == cluster_runs["nodes"]["cpu"]
    _assert_fault_mid_run(run)
    _assert_every_row_once(run)
    assert cluster_runs["leaked"] == [], "Ray processes outlived the cluster"


@pytest.mark.slow
def test_model_actors_only_on_gpu_nodes_cpu_stages_anywhere(cluster_runs):
    run, nodes = cluster_runs["worker_loss"], cluster_runs["nodes"]
    gpu_nodes = set(nodes["gpu"])
    model_nodes = {r["node"] for r in run["model"]}
    # gpus_per_actor 1: two actors, one on each node that has a GPU, none elsewhere
    assert model_nodes == gpu_nodes, (model_nodes, nodes)
    assert all(r["gpus"] for r in run["model"]), "an actor ran without a GPU assigned"
    # the CPU stages' tasks (by the stage functions' names) ran on nodes without a GPU too
    stages = {n: v for n, v in run["tasks"].items() if "prepare_batch" in n or "finish_batch" in n}
    assert any("prepare_batch" in n for n in stages), run["tasks"]
    assert any("finish_batch" in n for n in stages), run["tasks"]
    ran_on = {node for v in stages.values() for node in v}
    assert ran_on & {nodes["head"], nodes["cpu"]}, f"CPU stages ran only on GPU nodes: {stages}"


@pytest.mark.slow
def test_model_actor_node_lost_actor_comes_back_elsewhere(cluster_runs):
    run, gpu_nodes = cluster_runs["actor_node_loss"], set(cluster_runs["nodes"]["gpu"])
    _assert_fault_mid_run(run)
    loads = [r for r in run["model"] if r["event"] == "load"]
    removed = run["fault"]["removed"]
    assert loads[0]["node"] == removed, "the removed node was not the actor's"
    later = {r["node"] for r in loads[1:]}
    assert later and removed not in later and later <= gpu_nodes, (loads, gpu_nodes)
    last_call = [r for r in run["model"] if r["event"] == "call"][-1]
    assert last_call["node"] in later  # the rest of the rows ran on the new actor
    _assert_every_row_once(run)


@pytest.mark.slow
def test_gpu_workers_autoscale_from_zero(tmp_path):
    result = _drive("autoscale", tmp_path, AUTOSCALE_TIMEOUT_S)
    assert result["leaked"] == [], "Ray processes outlived the autoscaling cluster"
    assert result["gpus_at_start"] == 0 and len(result["nodes_at_start"]) == 1
    run = result["run"]
    model_nodes = {r["node"] for r in run["model"]}
    # the actor ran on a node the autoscaler added for its GPU request
    assert model_nodes and not model_nodes & set(result["nodes_at_start"]), result
    assert all(result["nodes_at_end"].get(n) == 1 for n in model_nodes), result["nodes_at_end"]
    assert any("the actors wait for the autoscaler" in line for line in run["echo"])
    _assert_every_row_once(run)


# ------------------------------------------------------------------------------------------------
def test_temp_file_of_a_write_cut_short_is_removed_as_the_jobs_own(tmp_path):
    """A finish task killed mid-write (its node lost) leaves storage.local's temp file beside the
    key; seen in the node-loss run. Finalize removes it when the key is one of the job's, and
    leaves any other dot-file alone."""
    _, rows = local_dataset(tmp_path, 2)
    ctx, _ = _stages_into_parts(tmp_path, rows)
    images = Path(ctx.config.output) / "images"
    (images / ".r001.png.7d6989f175e2.tmp").write_bytes(b"half an image")
    (images / ".holiday.png.7d6989f175e2.tmp").write_bytes(b"not the job's")
    (images / ".r001.png.notahexsuffix.tmp").write_bytes(b"not the job's either")
    summary, _ = _finalize(ctx, 2)
    assert summary["success"], summary["problems"]
    assert summary["orphans_removed"] == 1 and summary["unknown_objects_kept"] == 2
    assert sorted(p.name for p in images.iterdir()) == [
        ".holiday.png.7d6989f175e2.tmp", ".r001.png.notahexsuffix.tmp", "r000.png", "r001.png"]  # fmt: skip
