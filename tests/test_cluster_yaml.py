"""cluster.yaml must be able to run what the job asks for: its GPU worker type fits one model actor
(GPU and CPUs) plus a read/write task, the head runs no inference, and setup installs this package."""

from pathlib import Path

import yaml

from batch_inpaint.config import JobConfig

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_head_runs_no_inference():
    c = load()
    head = c["available_node_types"][c["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 0) == 0
    assert head["max_workers"] == 0


def test_gpu_worker_fits_the_default_job():
    c = load()
    cfg = JobConfig(manifest="m", output="o")
    gpu_types = [t for t in c["available_node_types"].values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker type"
    for t in gpu_types:
        res = t["resources"]
        gpus_per_actor = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else 1.0
        assert gpus_per_actor <= res["GPU"]
        assert (res["GPU"] / gpus_per_actor) == int(res["GPU"] / gpus_per_actor)
        assert cfg.cpus_per_actor + cfg.cpus_per_task <= res["CPU"]
        assert t["min_workers"] == 0 and t["max_workers"] >= 1  # autoscaling from zero
        assert t["max_workers"] <= c["max_workers"]


def test_fractional_gpus_divide_the_worker():
    c = load()
    cfg = JobConfig(manifest="m", output="o", gpus_per_actor=0.5, max_actors=2)
    res = c["available_node_types"]["gpu_worker"]["resources"]
    assert (
        res["GPU"] / cfg.gpus_per_actor
        >= cfg.max_actors / c["available_node_types"]["gpu_worker"]["max_workers"]
    )


def test_setup_installs_this_package_and_ray():
    c = load()
    setup = " ".join(c["setup_commands"])
    assert "pip install" in setup and "batch-inpaint" in setup and "ray[" in setup
    assert c["provider"]["type"] == "aws"
    assert "." in c["file_mounts"].values()
