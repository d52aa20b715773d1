"""The driver-side decisions of ray_job that need no cluster."""

import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job.ray_job import _gpus_per_actor
from batch_inpaint.job.scan import result_ids


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
    assert _gpus_per_actor(cfg, cluster_gpus, said.append) == expected
    if expected == 0.0 and cfg.backend == "diffusers" and cfg.device == "auto":
        assert "--gpus-per-actor 1" in said[0]


def test_result_ids_are_unique_and_one_per_row():
    ids = ["a", "b", "a", None, "", "a", "c"]
    assert result_ids(ids) == ["a", "b", "a#2", "#row-3", "#row-4", "a#3", "c"]
