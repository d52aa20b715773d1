"""A job error raised inside Ray (a model actor that can't load its model) reaches the driver
wrapped in Ray's own exceptions; job_error finds it again so the command prints one line. Real
Ray exceptions from the session's local instance, and a real run whose model can't be loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from batch_inpaint.errors import ModelError
from batch_inpaint.job.driver.lock import LostLockError
from batch_inpaint.job.executors.ray_errors import job_error

pytestmark = pytest.mark.slow


class _Loads:
    def __init__(self):
        raise ModelError("could not load model '/m': a test's broken weights")

    def ping(self):
        return 1


def _fails():
    raise ModelError("could not load model '/m': in a task")


def _loses_lock():
    raise LostLockError("/o/_LOCK: this run lost the output's lock")


def test_job_error_finds_the_model_error_inside_rays_exceptions(ray_local):
    import ray

    with pytest.raises(Exception) as died:
        ray.get(ray.remote(_Loads).remote().ping.remote(), timeout=120)
    found = job_error(died.value)
    assert isinstance(found, ModelError) and "a test's broken weights" in str(found)
    with pytest.raises(Exception) as failed:
        ray.get(ray.remote(_fails).remote(), timeout=120)
    assert isinstance(job_error(failed.value), ModelError)
    assert job_error(RuntimeError("unrelated")) is None
    with pytest.raises(Exception) as lost:  # an error class outside batch_inpaint.errors
        ray.get(ray.remote(_loses_lock).remote(), timeout=120)
    assert isinstance(job_error(lost.value), LostLockError)


def test_a_model_that_fails_to_load_in_its_actors_is_one_line_not_a_traceback(
    ray_local, tiny_model_dir, tmp_path
):
    import shutil

    from tests.fixtures_ray import local_dataset

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:2000])  # damaged: passes the driver's checks
    manifest, _ = local_dataset(tmp_path / "in", 4)
    r = subprocess.run(
        [sys.executable, "-m", "batch_inpaint", "run", "--manifest", str(manifest), "--output",
         str(tmp_path / "out"), "--backend", "tiny", "--model", str(model), "--executor", "ray"],
        env=ray_local.driver_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    said = r.stdout + r.stderr
    assert r.returncode == 2, said[-3000:]
    assert "Traceback" not in said and len(said.splitlines()) < 20, said[-3000:]
    assert "could not load model" in r.stderr and "--backend opencv" in r.stderr
    assert os.path.isdir(tmp_path / "out")  # claimed, with no result written
