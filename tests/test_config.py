"""JobConfig: every field validated with an error that names it, YAML loading, flags over YAML, and
`batch-inpaint run` refusing a bad value before any cluster work."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time

import pytest

from batch_inpaint.cli.flags import add_arguments, config_from_args
from batch_inpaint.config import KEYS, JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.job.stages.model import batch_size_for
from tests.fixtures_ray import REPO

# field -> values that must be refused, each with an error naming the field
BAD_VALUES = {
    "manifest": [3],
    "max_error_rate": [1.5, -0.1, "0.2", float("nan")],
    "max_model_memory_gb": [0, -1.0],
    "output": [None],
    "backend": ["torch", ""],
    "model": [5],
    "revision": [1.5],
    "vae": [5],
    "device": ["tpu"],
    "dtype": ["fp8", "half"],
    "attention": ["flash"],
    "vae_tiling": ["yes", 1],
    "torch_compile": [0],
    "mode": ["tiles"],
    "max_side": [100, 32, "512", 512.0],
    "crop_size": [60, 250],
    "mask_threshold": [1.5, -0.1, float("nan"), "0.5"],
    "invert_mask": ["false"],
    "mask_resize": [None],
    "dilate": [-1, 513, 2.5],
    "feather": [-3, 1000],
    "max_pixels": [0, -5, 1e9],
    "prompt": [7, None],
    "negative_prompt": [["a"]],
    "steps": [0, 1001, -1, True, "50"],
    "guidance_scale": [-1, 101, float("nan"), "7"],
    "eta": [1.5, -0.5],
    "strength": [0, 1.01, -1],
    "scheduler": ["karras"],
    "seed": [1.5, "42"],
    "batch_size": [-1, 2.0],
    "min_actors": [0],
    "max_actors": [0],
    "fuse_stages": ["yes", 1],
    "gpus_per_actor": [-1, 9, float("nan")],
    "cpus_per_actor": [0, -1],
    "cpus_per_task": [0],
    "address": [6379],
    "executor": ["Ray", "", None],
    "verbose": ["yes", 1],
    "prune": ["yes", 1],
    "allow_non_empty_output": ["no", 0],
    "output_format": ["gif", "PNG", "tar"],
    "image_format": ["gif", "files", None],
    "image_column": [3, None],
    "mask_column": [["m"]],
    "id_column": [7],
    "mask_member": [None, 1],
    "jpeg_quality": [0, 101],
    "png_compress_level": [-1, 10],
    "keep_exif": ["no"],
    "resume": [None],
    "retry_errors": [2],
    "incremental": ["true"],
    "lock_ttl_s": [0, -1, float("nan")],
    "flush_rows": [0],
    "flush_interval_s": [-1],
    "progress_interval_s": [-1],
    "report_sample": [-1],
    "endpoint_url": ["ftp://minio:9000", "minio:9000"],
    "region": [1],
    "profile": [False],
    "anon": ["yes"],
    "allow_http": [1],
    "allowed_buckets": ["bucket", [1, 2]],
    "detect": [5, [1]],
    "detector": [3, "  "],
    "detector_revision": [1],
    "text_detector": [""],
    "text_detector_revision": [2],
    "segmenter": [False],
    "segmenter_revision": [2.5],
    "detect_threshold": [1.5, -0.1, "0.3"],
    "text_threshold": [2, float("nan")],
    "text_min_confidence": [1.5, -0.1],
    "max_detections": [0],
    "detect_dilate": [-1, 513],
    "detect_batch_size": [0],
    "detect_actors": [0],
    "gpus_per_detect_actor": [-1, 9],
    "cpus_per_detect_actor": [0, -1],
    "verify": ["yes"],
    "max_residual": [1.5, -1],
}


def test_every_field_has_bad_values_listed():
    assert set(BAD_VALUES) == set(KEYS)


@pytest.mark.parametrize(
    "name,value", [(n, v) for n, values in BAD_VALUES.items() for v in values], ids=repr
)
def test_bad_value_is_refused_naming_the_field(name, value):
    with pytest.raises(ConfigError) as info:
        JobConfig(**{name: value})
    assert f"'{name}'" in str(info.value), str(info.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="'max_actors'.*min_actors"):
        JobConfig(min_actors=3, max_actors=2)
    with pytest.raises(ConfigError, match="'dtype'.*GPU"):
        JobConfig(device="cpu", dtype="fp16")
    JobConfig(device="cpu", dtype="fp32")
    JobConfig(device="cuda", dtype="bf16")


def test_good_values_pass_and_ints_widen_to_floats():
    cfg = JobConfig(guidance_scale=5, lock_ttl_s=10, gpus_per_actor=0, allowed_buckets=("a", "b"))
    assert isinstance(cfg.generation.guidance_scale, float) and cfg.generation.guidance_scale == 5.0
    assert cfg.allowed_buckets == ["a", "b"]
    assert JobConfig(crop_size=None, seed=None, model=None).geometry.crop_size is None
    assert JobConfig(mode="crop", crop_size=256).inpaint_options().geometry.crop_size == 256


def test_require_io_names_the_missing_field():
    with pytest.raises(ConfigError, match="'manifest'"):
        JobConfig(output="/tmp/o").require_io()
    with pytest.raises(ConfigError, match="'output'"):
        JobConfig(manifest="m.parquet").require_io()
    JobConfig(manifest="m.parquet", output="/tmp/o").require_io()


def test_derived_objects():
    cfg = JobConfig(steps=3, prompt="sky", dilate=4, feather=2, mode="crop", output_format="jpeg")
    opts = cfg.inpaint_options()
    assert opts.generation.num_inference_steps == 3 and opts.generation.prompt == "sky"
    assert (opts.mask.dilate, opts.mask.feather, opts.geometry.mode) == (4, 2, "crop")
    assert cfg.extension == "jpg"
    assert batch_size_for(512, 512, on_gpu=False) == 1
    assert batch_size_for(512, 512, on_gpu=True) > batch_size_for(1024, 1024, on_gpu=True)


def test_to_dict_round_trips_and_holds_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    cfg = JobConfig(manifest="s3://b/m.parquet", output="s3://b/o", endpoint_url="http://h:9000")
    assert JobConfig.from_dict(cfg.to_dict()) == cfg
    text = json.dumps(cfg.to_dict())
    assert "AKIAEXAMPLEKEY" not in text and "very-secret-value" not in text
    assert cfg.storage_options().endpoint_url == "http://h:9000"


# ------------------------------------------------------------------------------------------------
# YAML
def _yaml(tmp_path, text: str):
    p = tmp_path / "job.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_yaml_loads_and_accepts_dashed_keys(tmp_path):
    p = _yaml(
        tmp_path,
        """
        manifest: s3://b/m.parquet
        output: s3://b/out
        backend: opencv
        steps: 20
        guidance-scale: 5
        allowed_buckets: [b]
        vae_tiling: true
        """,
    )
    cfg = JobConfig.from_yaml(p)
    assert (cfg.backend, cfg.generation.num_inference_steps, cfg.generation.guidance_scale) == (
        "opencv",
        20,
        5.0,
    )
    assert cfg.allowed_buckets == ["b"] and cfg.vae_tiling is True


def test_yaml_unknown_key_is_named_with_the_file(tmp_path):
    p = _yaml(tmp_path, "steps: 5\nnum_steps: 5\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['num_steps'\]") as info:
        JobConfig.from_yaml(p)
    assert str(p) in str(info.value)


@pytest.mark.parametrize(
    "text,field",
    [
        ("steps: fifty\n", "steps"),
        ("steps: 5.5\n", "steps"),
        ("resume: maybe\n", "resume"),
        ("allowed_buckets: b1\n", "allowed_buckets"),
        ("guidance_scale: [1]\n", "guidance_scale"),
        ("dilate: -2\n", "dilate"),
    ],
)
def test_yaml_wrong_types_name_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        JobConfig.from_yaml(_yaml(tmp_path, text))


@pytest.mark.parametrize(
    "text,words",
    [("- a\n- b\n", "mapping"), ("steps: [1,\n", "not valid YAML"), ("", None)],
)
def test_yaml_that_is_not_a_mapping(tmp_path, text, words):
    p = _yaml(tmp_path, text)
    if words is None:  # an empty file is all defaults
        assert JobConfig.from_yaml(p) == JobConfig()
        return
    with pytest.raises(ConfigError, match=words):
        JobConfig.from_yaml(p)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        JobConfig.from_yaml(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------------------------
# flags
def _parse(argv: list[str]) -> JobConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_flags_override_yaml_and_yaml_overrides_defaults(tmp_path):
    p = _yaml(
        tmp_path,
        """
        manifest: m.parquet
        output: out
        steps: 20
        prompt: from yaml
        resume: false
        allowed_buckets: [yaml-bucket]
        """,
    )
    cfg = _parse(["--config", str(p), "--steps", "3", "--resume", "--allowed-buckets", "x,y"])
    assert cfg.generation.num_inference_steps == 3 and cfg.resume is True  # flags win
    assert cfg.allowed_buckets == ["x", "y"]
    assert (
        cfg.generation.prompt == "from yaml" and cfg.manifest == "m.parquet"
    )  # yaml beats defaults
    assert (
        cfg.generation.guidance_scale == JobConfig().generation.guidance_scale
    )  # defaults fill the rest
    cfg = _parse(["--config", str(p), "--no-resume"])
    assert cfg.resume is False and cfg.generation.num_inference_steps == 20


def test_every_field_has_a_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dests = {a.dest for a in parser._actions}
    assert set(KEYS) <= dests


def test_bad_flag_value_names_the_field():
    with pytest.raises(ConfigError, match="'jpeg_quality'"):
        _parse(["--jpeg-quality", "0"])
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        _parse(["--backend", "nope"])


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--steps", "0"], "steps"),
        (["--backend", "nope"], "backend"),
        (["--max-side", "100"], "max_side"),
        (["--min-actors", "2", "--max-actors", "1"], "max_actors"),
    ],
)
def test_batch_inpaint_run_bad_value_exits_2_before_ray(tmp_path, flags, field):
    """`batch-inpaint run` refuses at once: exit status 2, the field named, Ray never imported."""
    code = textwrap.dedent(
        """
        import sys
        from batch_inpaint.cli import main
        try:
            rc = main(sys.argv[1:])
        except SystemExit as exc:  # argparse's own refusals
            rc = exc.code
        print("RAY_IMPORTED" if "ray" in sys.modules else "RAY_NOT_IMPORTED")
        sys.exit(rc)
        """
    )
    argv = ["run", "--manifest", str(tmp_path / "m.parquet"), "--output", str(tmp_path / "o")]
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv, *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.time() - t0
    assert proc.returncode == 2, proc.stderr
    assert "RAY_NOT_IMPORTED" in proc.stdout
    assert field.replace("_", "-") in proc.stderr or f"'{field}'" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
    assert took < 60
