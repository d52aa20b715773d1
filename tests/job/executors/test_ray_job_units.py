"""The driver-side decisions of ray_job that need no cluster."""

import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver.resources import (
    READ_CPUS,
    DetectPlan,
    check_room,
    gpus_per_actor,
    pool,
    shares,
)
from batch_inpaint.job.driver.scan import result_ids


@pytest.mark.parametrize(
    ("settings", "cluster_gpus", "expected"),
    [
        ({}, 4, 1.0),  # GPUs present: one per actor
        ({}, 0, 0.0),  # none: CPU actors, with a warning
        ({"device": "cuda"}, 0, 1.0),  # autoscaling from zero: cuda asks for GPUs anyway
        ({"gpus_per_actor": 0.5}, 0, 0.5),  # fractions share a GPU; as configured
        ({"backend": "opencv"}, 4, 0.0),  # classical backend never takes a GPU
        ({"device": "cpu"}, 4, 0.0),
    ],
)
def test_gpus_per_actor(settings, cluster_gpus, expected):
    said = []
    cfg = JobConfig(manifest="m", output="o", **settings)
    assert gpus_per_actor(cfg, cluster_gpus, said.append) == expected
    if expected == 0.0 and cfg.backend == "diffusers" and cfg.device == "auto":
        assert "--gpus-per-actor 1" in said[0]


def test_result_ids_are_unique_and_one_per_row():
    ids = ["a", "b", "a", None, "", "a", "c"]
    assert result_ids(ids) == ["a", "b", "a#2", "#row-3", "#row-4", "a#3", "c"]


def _cfg(**settings) -> JobConfig:
    return JobConfig(manifest="m", output="o", backend="opencv", **settings)


@pytest.mark.parametrize(
    ("settings", "cpus", "pools", "expected"),
    [
        ({}, 8, 2, (1.0, 1.0)),  # room for every first actor and a read task
        ({}, 2, 0, (1.0, 1.0)),  # a laptop, no detection: one actor and the read task
        ({}, 2, 1, (0.5, 0.5)),  # detect: model and detect actors share the CPU left
        ({}, 2, 2, (0.3333, 0.3333)),  # detect and verify: a third each
        ({"cpus_per_actor": 0.5}, 2, 2, (0.5, 0.25)),  # a share set is kept, the rest split
        ({"cpus_per_detect_actor": 2.0}, 16, 1, (1.0, 2.0)),
        ({}, 0, 1, (1.0, 1.0)),  # a cluster still to autoscale: nothing to split
        ({"min_actors": 3}, 3, 1, (0.5, 0.5)),
    ],
)
def test_unset_cpu_shares_fit_the_first_actors_beside_a_read_task(settings, cpus, pools, expected):
    assert shares(_cfg(**settings), cpus, pools, fused=True) == expected
    actor, detect = expected
    if cpus >= 2:  # what the run starts with fits, so it can't wait on itself
        assert actor * _cfg(**settings).min_actors + detect * pools + READ_CPUS <= cpus


def test_the_split_graph_leaves_its_tasks_cpus():
    # prepare and finish tasks asking 2 CPUs each: the actors leave 2, not 1
    assert shares(_cfg(cpus_per_task=2.0), 4, 1, fused=False) == (1.0, 1.0)
    assert shares(_cfg(cpus_per_task=2.0), 3, 1, fused=False) == (0.5, 0.5)


def test_pool_counts_the_detect_actors_before_sizing_the_model_pool():
    assert pool(_cfg(), 0.0, 2, detect_pools=0).max_actors == 2
    cfg = pool(_cfg(), 0.0, 2, detect_pools=2)
    assert (cfg.max_actors, cfg.cpus_per_actor, cfg.detection.cpus_per_detect_actor) == (
        1,
        0.3333,
        0.3333,
    )


@pytest.mark.parametrize(
    ("settings", "cpus", "waits"),
    [
        ({}, 2, False),
        ({"cpus_per_actor": 1.0, "cpus_per_detect_actor": 1.0}, 2, True),  # as set: 3 > 2
        ({}, 1, True),  # one CPU: the read task has none left
    ],
)
def test_check_room_says_when_the_run_would_wait(settings, cpus, waits):
    said = []
    cfg = pool(_cfg(**settings), 0.0, cpus, detect_pools=1)
    plan = DetectPlan(("logo",), 0.0, pools=1)
    check_room(cfg, plan, 0.0, {"CPU": cpus}, said.append)
    assert bool(said) == waits
    if waits:
        assert "one read task" in said[0] and "the job waits" in said[0]


@pytest.mark.parametrize(("detected", "declared"), [(1, 2), (1.5, 2), (2, 2), (16, 16)])
def test_a_private_instance_declares_at_least_two_cpus(monkeypatch, detected, declared):
    """One CPU would hold the first model actor, and the read task would wait for ever."""
    import ray._private.utils

    from batch_inpaint.job.executors.cluster import local_cpus

    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda: detected)
    assert local_cpus() == declared


def test_a_private_instance_that_can_never_fit_the_pools_is_a_config_error():
    """A private local instance never gets more CPUs or GPUs: waiting would be for ever."""
    from batch_inpaint.errors import ConfigError

    cfg = pool(_cfg(cpus_per_detect_actor=4.0), 0.0, 2, detect_pools=2)
    plan = DetectPlan(("logo",), 0.0, pools=2)
    with pytest.raises(ConfigError, match="never gets more: lower --cpus-per-actor"):
        check_room(cfg, plan, 0.0, {"CPU": 2}, print, fixed=True)
    with pytest.raises(ConfigError, match="need 1 GPUs"):  # --gpus-per-actor 1 on a laptop
        check_room(pool(_cfg(), 1.0, 8), None, 1.0, {"CPU": 8}, print, fixed=True)
    said = []  # a cluster may autoscale: it waits, and says so
    check_room(cfg, plan, 0.0, {"CPU": 2}, said.append, fixed=False)
    assert "the job waits for more" in said[0]
