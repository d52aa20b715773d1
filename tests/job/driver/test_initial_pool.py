"""Model actor pools start at the size the cluster's GPUs allow (job/driver/resources.py): the rule on
made-up clusters, then a multi-node Ray cluster with two fake GPUs where both model actors exist
before the first block finishes (Ray Data would start one and grow it one actor at a time)."""

from __future__ import annotations

import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver.resources import (
    READ_CPUS,
    DetectPlan,
    gpu_actors,
    plan_resources,
    start_size,
)
from tests.fixtures_ray import local_dataset
from tests.job.executors.test_multinode import _drive

INITIAL_POOL_TIMEOUT_S = 240  # ~40 s on a quiet 2-core machine


@pytest.mark.parametrize(
    ("gpus", "cluster_gpus", "detect", "expected"),
    [
        (1.0, 8, None, 8),
        (1.0, 0, None, 0),  # GPU workers still to autoscale from zero
        (0.0, 8, None, 0),  # CPU actors
        (2.0, 5, None, 2),
        (0.5, 3, None, 6),  # fractions pack within a GPU
        (0.4, 2, None, 4),  # 2 per GPU, not 2/0.4 = 5
        (0.75, 4, DetectPlan(("logo",), 0.25), 4),  # one GPU holds a model and the detector
        (0.5, 4, DetectPlan(("logo",), 0.25, pools=2), 7),  # detect and verify on one GPU
    ],
)
def test_gpu_actors_the_cluster_holds(gpus, cluster_gpus, detect, expected):
    assert gpu_actors(gpus, cluster_gpus, detect) == expected


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return str(local_dataset(tmp_path_factory.mktemp("initial"), 2)[0])


def _plan(manifest: str, resources: dict, **settings):
    from batch_inpaint.storage.store import Storage

    cfg = JobConfig(manifest=manifest, output="o", backend="tiny", **settings)
    said: list[str] = []
    storage = Storage(cfg.storage_options())
    run_cfg, gpus, detect = plan_resources(cfg, resources, storage, echo=said.append)
    return run_cfg, gpus, start_size(run_cfg, gpus, resources, detect), said


@pytest.mark.parametrize(
    ("settings", "resources", "expected"),
    [
        ({}, {"CPU": 64, "GPU": 8}, (1, 8, 8)),  # unset: every GPU's actor from the start
        ({"max_actors": 4}, {"CPU": 64, "GPU": 8}, (1, 4, 4)),  # a ceiling given is kept
        ({"min_actors": 2, "max_actors": 16}, {"CPU": 64, "GPU": 8}, (2, 16, 8)),
        ({"min_actors": 3}, {"CPU": 64, "GPU": 2}, (3, 3, 3)),  # a floor above the GPUs
        ({"gpus_per_actor": 1}, {"CPU": 8}, (1, 1, 1)),  # autoscaling from zero GPUs
        ({"device": "cpu"}, {"CPU": 8, "GPU": 8}, (1, 8, 1)),  # fused CPU pool: grows
    ],
)
def test_pool_starts_at_what_the_gpus_hold_within_min_and_max(
    manifest, settings, resources, expected
):
    cfg, _, initial, _ = _plan(manifest, resources, **settings)
    assert (cfg.min_actors, cfg.max_actors, initial) == expected


def test_unset_cpu_shares_leave_the_read_task_a_cpu_beside_every_starting_actor(manifest):
    # 4 GPUs, 4 CPUs: four actors of 1 CPU would take them all and the read task would wait
    cfg, gpus, initial, said = _plan(manifest, {"CPU": 4, "GPU": 4})
    assert (gpus, initial) == (1.0, 4) and not said
    assert initial * cfg.cpus_per_actor + READ_CPUS <= 4, cfg.cpus_per_actor


@pytest.mark.slow
def test_every_gpus_actor_exists_before_the_first_block_finishes(tmp_path):
    result = _drive("initial_pool", tmp_path, INITIAL_POOL_TIMEOUT_S)
    assert result["leaked"] == [], "Ray processes outlived the cluster"
    run, gpu_nodes = result["run"], set(result["nodes"]["gpu"])
    assert run["statuses"] == ["ok"] and run["success"], run["errors"]
    loads = [r for r in run["model"] if r["event"] == "load"]
    # one actor per GPU node, each given its GPU, with min/max_actors left unset
    assert sorted(r["node"] for r in loads) == sorted(gpu_nodes), loads
    assert all(r["gpus"] for r in loads), loads
    # A block is 2 model calls (16 rows, batches of 8): the first block finished no sooner
    # than the second call of some actor returned.
    ends: dict[int, list[float]] = {}
    for r in run["model"]:
        if r["event"] == "done":
            ends.setdefault(r["pid"], []).append(r["t"])
    first_block_end = min(t[1] if len(t) > 1 else t[0] for t in ends.values())
    assert max(r["t"] for r in loads) < first_block_end, (loads, ends)
    assert first_block_end <= run["fault"]["first_part_t"]  # the driver saw rows after it
