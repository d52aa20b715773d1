"""cluster.yaml must be able to run what the job asks for: its GPU worker type fits one model actor
(GPU and CPUs), a detect and a verify actor, plus a read/write task, the head runs no inference, and setup installs this package."""

from pathlib import Path

import pytest
import yaml

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver.resources import pool

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
        # the shares as a run on one such worker resolves them (job/driver/resources.py)
        used = pool(cfg, gpus_per_actor, res["CPU"], detect_pools=2)
        assert (used.cpus_per_actor, used.detection.cpus_per_detect_actor) == (
            1.0,
            1.0,
        )  # room for all
        need = used.cpus_per_actor + 2 * used.detection.cpus_per_detect_actor + used.cpus_per_task
        assert need <= res["CPU"]  # model, detect and verify actors, and a read/write task
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


def test_every_node_gets_s3_credentials_from_an_instance_profile():
    """Ray gives its default profile to the head only: a worker without one can't read S3."""
    import re

    c = load()
    text = (ROOT / "cluster.yaml").read_text()
    for name, t in c["available_node_types"].items():
        profile = t["node_config"].get("IamInstanceProfile")
        assert profile, f"{name}: no IamInstanceProfile"
        assert re.fullmatch(r"arn:aws:iam::[A-Z0-9_]+:instance-profile/[\w+=,.@-]+", profile["Arn"])
    assert "iam:PassRole" in text and "README" in text  # the comment says what each role needs
    assert not re.search(r"aws_(access_key_id|secret_access_key)|AKIA[0-9A-Z]{16}", text, re.I)


def test_node_configs_are_ec2_run_instances_parameters_and_ray_accepts_the_file():
    botocore = pytest.importorskip("botocore.session")
    from ray.autoscaler._private.util import prepare_config, validate_config

    request = (
        botocore.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    )
    c = load()
    for t in c["available_node_types"].values():
        config = t["node_config"]
        assert set(config) <= set(request.members), set(config) - set(request.members)
        assert set(config["IamInstanceProfile"]) <= set(
            request.members["IamInstanceProfile"].members
        )
    validate_config(prepare_config(c))  # Ray's own schema check, as `ray up` runs it
