"""One source of options: every YAML key, `run` flag, help line and nested field of JobConfig is
derived from the options' field metadata; keys round-trip, flags map to their own field, help
prints each default once in groups, and the web page's exports reproduce options in a job."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest

from batch_inpaint.config import KEYS, JobConfig
from batch_inpaint.detect.options import DetectionOptions
from batch_inpaint.errors import ConfigError
from batch_inpaint.shard_options import ShardOptions
from tests.fixtures_ray import REPO
from tests.test_config import BAD_VALUES, _parse, _yaml

# key -> a good value other than the default
GOOD_VALUES = {
    "manifest": "s3://b/m.parquet", "output": "s3://b/out/", "image_column": "jpg",
    "mask_column": "seg", "id_column": "key", "mask_member": "seg.png",
    "backend": "opencv", "model": "m/x",
    "revision": "abc123", "device": "cuda", "dtype": "fp16", "attention": "sdpa",
    "vae_tiling": True, "vae": "m/vae", "torch_compile": True, "mode": "crop", "max_side": 512,
    "crop_size": 256,
    "mask_threshold": 0.25, "invert_mask": True, "dilate": 4, "feather": 6, "mask_resize": True,
    "max_pixels": 1000, "prompt": "sky", "negative_prompt": "blur", "steps": 20,
    "guidance_scale": 5.5, "eta": 0.5, "strength": 0.75, "seed": 42, "scheduler": "ddim",
    "detect": ["watermark", "text"], "detector": "/m/dino", "detector_revision": "d1",
    "text_detector": "none", "text_detector_revision": "t1", "segmenter": "s3://b/sam",
    "segmenter_revision": "s1", "detect_threshold": 0.2, "text_threshold": 0.5,
    "text_min_confidence": 0.7,
    "max_detections": 10, "detect_dilate": 3, "detect_batch_size": 2, "detect_actors": 2,
    "gpus_per_detect_actor": 0.25, "cpus_per_detect_actor": 0.5, "verify": True, "max_residual": 0.4,
    "batch_size": 2, "min_actors": 2, "max_actors": 3, "fuse_stages": False,
    "gpus_per_actor": 0.5,
    "cpus_per_actor": 2.0, "cpus_per_task": 0.5, "max_model_memory_gb": 16.0,
    "address": "ray://head:10001", "executor": "local", "verbose": True,
    "output_format": "webdataset", "image_format": "webp", "jpeg_quality": 80, "png_compress_level": 6, "keep_exif": True,
    "resume": False, "retry_errors": True, "incremental": True, "prune": True,
    "allow_non_empty_output": True, "lock_ttl_s": 60.0,
    "flush_rows": 10, "flush_interval_s": 5.0, "progress_interval_s": 1.0, "max_error_rate": 0.2,
    "report_sample": 3,
    "endpoint_url": "http://h:9000", "region": "eu-west-1", "profile": "p", "anon": True,
    "allow_http": True, "allowed_buckets": ["a", "b"],
}  # fmt: skip
# where each flat key lives: the nested options it sets, under its field name there
NESTED = {
    "mode": ("geometry", "mode"), "max_side": ("geometry", "max_side"),
    "crop_size": ("geometry", "crop_size"), "mask_threshold": ("mask", "threshold"),
    "invert_mask": ("mask", "invert"), "dilate": ("mask", "dilate"),
    "feather": ("mask", "feather"), "mask_resize": ("mask", "resize"),
    "prompt": ("generation", "prompt"), "negative_prompt": ("generation", "negative_prompt"),
    "steps": ("generation", "num_inference_steps"),
    "guidance_scale": ("generation", "guidance_scale"), "eta": ("generation", "eta"),
    "strength": ("generation", "strength"), "seed": ("generation", "seed"),
    "scheduler": ("generation", "scheduler"),
}  # fmt: skip
NESTED.update({f.name: ("detection", f.name) for f in dataclasses.fields(DetectionOptions)})
NESTED.update({f.name: ("shards", f.name) for f in dataclasses.fields(ShardOptions)})


def test_good_values_cover_every_key_and_differ_from_the_defaults():
    assert set(GOOD_VALUES) == set(KEYS) == set(BAD_VALUES)
    defaults = JobConfig().to_dict()
    assert [k for k, v in GOOD_VALUES.items() if defaults[k] == v] == []


def test_keys_are_the_readme_keys_and_nest_once():
    """The flat keys are the documented ones; the per-image ones live in the nested options."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("A `job.yaml`", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    import yaml

    assert set(yaml.safe_load(block)) <= set(KEYS)
    assert {n: (k.part, k.field.name) for n, k in KEYS.items() if k.part} == NESTED
    cfg = JobConfig(**GOOD_VALUES)
    for name, (part, attr) in NESTED.items():
        assert getattr(getattr(cfg, part), attr) == GOOD_VALUES[name] == cfg.value(name)
    opts = cfg.inpaint_options()
    assert (opts.generation, opts.mask, opts.geometry) == (cfg.generation, cfg.mask, cfg.geometry)


def test_every_key_round_trips_yaml_config_dict_yaml(tmp_path):
    import yaml

    text = yaml.safe_dump(GOOD_VALUES, sort_keys=False)
    cfg = JobConfig.from_yaml(_yaml(tmp_path, text))
    assert cfg.to_dict() == GOOD_VALUES
    assert yaml.safe_dump(cfg.to_dict(), sort_keys=False) == text
    assert list(cfg.to_dict()) == list(KEYS)  # job.json keeps one stable order
    assert JobConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_nested_objects_and_flat_names_mix():
    from batch_inpaint.params import GenerationParams, GeometryOptions

    cfg = JobConfig(generation=GenerationParams(prompt="wall", eta=0.2), steps=7,
                    geometry=GeometryOptions(mode="crop"))  # fmt: skip
    assert (cfg.generation.prompt, cfg.generation.eta, cfg.value("steps"), cfg.value("mode")) == (
        "wall",
        0.2,
        7,
        "crop",
    )
    cfg = dataclasses.replace(cfg, dilate=3)  # a flat name reaches the nested options, checked
    assert cfg.mask.dilate == 3 and cfg.to_dict()["dilate"] == 3
    with pytest.raises(ConfigError, match="'dilate'"):
        dataclasses.replace(cfg, dilate=-1)
    assert not hasattr(cfg, "steps")  # typed: nested settings are read where they live
    with pytest.raises(ConfigError, match="did you mean"):
        cfg.value("stepz")
    with pytest.raises(ConfigError, match="'generation'.*num_images_per_prompt"):
        JobConfig(generation=GenerationParams(num_images_per_prompt=2))  # not a job setting
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['num_steps'\]"):
        JobConfig(num_steps=3)
    assert dataclasses.replace(cfg, seed=5).generation.seed == 5


def _argv(key: str, value) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, list):
        return [flag, ",".join(value)]
    return [flag, str(value)]


@pytest.mark.parametrize("key", list(GOOD_VALUES))
def test_each_flag_sets_its_own_key(key):
    extra = ["--max-actors", "3"] if key == "min_actors" else []  # max_actors >= min_actors
    got = _parse(_argv(key, GOOD_VALUES[key]) + extra).to_dict()
    want = {**JobConfig().to_dict(), key: GOOD_VALUES[key]}
    if extra:
        want["max_actors"] = 3
    assert got == want


def test_all_flags_at_once():
    argv = [a for k, v in GOOD_VALUES.items() for a in _argv(k, v)]
    assert _parse(argv).to_dict() == GOOD_VALUES


def test_run_help_is_grouped_and_prints_each_default_once(capsys, monkeypatch):
    from batch_inpaint.cli import run
    from batch_inpaint.cli.flags import GROUPS

    monkeypatch.setenv("COLUMNS", "100")
    parser = argparse.ArgumentParser(prog="batch-inpaint")
    run.add_parser(parser.add_subparsers())  # what `batch-inpaint run --help` prints
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    sections = {}  # group title -> its text
    for chunk in text.split("\n\n"):
        title, _, body = chunk.partition(":\n")
        sections[title.strip()] = body
    assert list(GROUPS) == [t for t in sections if t in GROUPS]
    defaults = JobConfig().to_dict()
    for name, k in KEYS.items():
        body = sections[k.group]
        flag = "--" + name.replace("_", "-")
        # this flag's help: from its own line to the next flag's, on one line
        own = re.search(rf"^  {flag}[ ,\n].*?(?=^  -|\Z)", body, re.M | re.S)
        assert own, (name, body)
        own = " ".join(own.group(0).split())
        d = defaults[name]
        assert own.count("default:") == (0 if d in (None, "", []) else 1), own
        assert d in (None, "", []) or f"(default: {d})" in own or f"; default: {d})" in own, own


def test_web_exports_reproduce_the_options_in_a_job():
    """job_yaml + row_overrides (the web page's "reproduce in a job") give back the same options."""
    import yaml

    from batch_inpaint.config import job_yaml, row_overrides
    from batch_inpaint.manifest.schema import OVERRIDE_COLUMNS
    from batch_inpaint.params import (
        GenerationParams,
        GeometryOptions,
        InpaintOptions,
        MaskOptions,
        row_generation,
    )

    gen = GenerationParams(prompt="wall", negative_prompt="blur", num_inference_steps=12,
                           guidance_scale=4.0, strength=0.8, scheduler="ddim", seed=5)  # fmt: skip
    opts = InpaintOptions(gen, MaskOptions(dilate=3, feather=5), GeometryOptions(mode="crop"))
    settings = yaml.safe_load(job_yaml(opts, backend="diffusers", model="m/x"))
    assert "seed" not in settings  # a job's seed is a base for derived seeds: it goes in the row
    cfg = JobConfig.from_dict(settings)
    assert (cfg.model, cfg.mask, cfg.geometry) == ("m/x", opts.mask, opts.geometry)
    row = row_overrides(opts, seed=77)
    assert set(row) == set(OVERRIDE_COLUMNS) and row["seed"] == 77
    assert row_generation(row, cfg.generation) == dataclasses.replace(gen, seed=77)
    with pytest.raises(ConfigError, match="column 'seed'"):
        row_overrides(opts, seed=-1)
    with pytest.raises(ConfigError, match="'backend'"):
        job_yaml(opts, backend="onnx")
