"""The model spec: native size and size multiple from a backend, a local diffusers folder, an
object-storage prefix (moto) and the Hub (its cache, or the documented fallback when the Hub cannot
be reached); the loaded model's spec agrees; check_spec catches a model that does not."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models import TINY_MODEL_ID, load_inpainter
from batch_inpaint.models.spec import (
    DEFAULT_MODEL,
    FILL_IGNORES,
    ModelSpec,
    assumed_native_size,
    check_spec,
    model_spec,
)
from batch_inpaint.storage.store import Storage

# SDXL's shapes: UNet sample_size 128, a VAE of four blocks (scale 8) -> 1024 px.
XL_UNET = {"_class_name": "UNet2DConditionModel", "sample_size": 128, "in_channels": 9}
XL_VAE = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512]}


def write_configs(root: Path, unet: dict, vae: dict) -> Path:
    for name, cfg in (("unet", unet), ("vae", vae)):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The Hub unreachable and its cache empty, on any machine (the fallback is what is tested)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


def test_opencv_spec():
    spec = model_spec("opencv")
    assert spec == ModelSpec("opencv", "opencv-telea", None, None, 1, FILL_IGNORES)
    assert set(spec.ignores) == {
        "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "eta",
        "strength", "scheduler", "seed",
    }  # fmt: skip
    assert spec.describe() == {"backend": "opencv", "model": "opencv-telea", "revision": None}
    assert load_inpainter("opencv").spec == spec
    assert load_inpainter("opencv").spec.source == "loaded"


def test_tiny_spec_without_building_or_importing_torch(tmp_path):
    spec = model_spec("tiny")
    assert (spec.backend, spec.model, spec.native_size, spec.size_multiple) == (
        "tiny", TINY_MODEL_ID, 64, 8
    )  # fmt: skip
    # the job's result rows keep naming a given folder, as they did before the spec
    assert model_spec("tiny", str(tmp_path / "t")).model == str(tmp_path / "t")
    code = (
        "import sys; from batch_inpaint.models import model_spec; "
        "s = model_spec('tiny'); model_spec('opencv'); "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules; print(s.native_size)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "64", out.stderr
    assert not (tmp_path / "t").exists()  # nothing was built


def test_loaded_tiny_spec_equals_model_spec(tiny_inpainter):
    assert tiny_inpainter.spec == model_spec("tiny")
    assert tiny_inpainter.spec.describe() == tiny_inpainter.describe()


def test_local_diffusers_folder(tiny_model_dir):
    spec = model_spec("diffusers", str(tiny_model_dir))
    assert (spec.native_size, spec.size_multiple, spec.source) == (64, 8, "config")
    assert spec.model == str(tiny_model_dir)
    assert model_spec("diffusers", tiny_model_dir.as_uri()).native_size == 64
    loaded = load_inpainter("diffusers", str(tiny_model_dir), device="cpu")
    assert loaded.spec == spec
    check_spec(spec, loaded.spec)


def test_sdxl_like_folder_is_1024(tmp_path):
    spec = model_spec("diffusers", str(write_configs(tmp_path / "xl", XL_UNET, XL_VAE)))
    assert (spec.native_size, spec.size_multiple, spec.source) == (1024, 8, "config")


def test_folder_without_configs_is_a_config_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ConfigError, match="has no unet/config.json"):
        model_spec("diffusers", str(tmp_path))


def test_s3_prefix_reads_two_files(s3_bucket, s3_storage_options):
    storage = Storage(s3_storage_options)
    prefix = f"s3://{s3_bucket}/models/xl"
    storage.write_bytes(f"{prefix}/unet/config.json", json.dumps(XL_UNET).encode())
    storage.write_bytes(f"{prefix}/vae/config.json", json.dumps(XL_VAE).encode())
    spec = model_spec("diffusers", prefix, "v1", storage=storage)
    assert spec == ModelSpec("diffusers", prefix, "v1", 1024, 8)
    assert spec.source == "config"
    # StorageOptions work as well as a Storage
    assert model_spec("diffusers", prefix, storage=s3_storage_options).native_size == 1024
    with pytest.raises(ConfigError, match="has no unet/config.json"):
        model_spec("diffusers", f"s3://{s3_bucket}/models/none", storage=storage)


def test_hub_id_offline_falls_back_and_says_so(offline_hub, caplog):
    with caplog.at_level(logging.WARNING, logger="batch_inpaint.models.spec"):
        spec = model_spec("diffusers")
    assert spec.model == DEFAULT_MODEL
    assert (spec.native_size, spec.size_multiple, spec.source) == (512, 8, "assumed")
    assert "assuming native size 512" in caplog.text and DEFAULT_MODEL in caplog.text
    assert "HF_HUB_OFFLINE" in caplog.text
    xl = model_spec("diffusers", "acme/my-sdxl-inpainting", "abc123")
    assert (xl.native_size, xl.source, xl.revision) == (1024, "assumed", "abc123")
    assert (
        model_spec("diffusers", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1").native_size
        == 1024
    )


def test_fallback_rule():
    assert assumed_native_size("sd2-community/stable-diffusion-2-inpainting") == 512
    assert assumed_native_size("runwayml/stable-diffusion-inpainting") == 512
    assert assumed_native_size("Diffusers/Stable-Diffusion-XL-1.0-Inpainting-0.1") == 1024
    assert assumed_native_size("someone/juggernaut-XL-inpaint") == 1024
    assert assumed_native_size("someone/realistic-inpainting") == 512


def test_hub_id_from_the_hub_cache(offline_hub):
    """A Hub id whose configs are in the Hub cache is read from it, even offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--acme--wide-inpainting"
    write_configs(repo / "snapshots" / commit, {**XL_UNET, "sample_size": 96}, XL_VAE)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    spec = model_spec("diffusers", "acme/wide-inpainting")
    assert (spec.native_size, spec.source) == (768, "hub")
    assert model_spec("diffusers", "acme/wide-inpainting", commit).native_size == 768


def test_local_path_not_on_this_machine_is_assumed(tmp_path):
    spec = model_spec("diffusers", str(tmp_path / "only-on-workers" / "sdxl-inpaint"))
    assert (spec.native_size, spec.source) == (1024, "assumed")


def test_unknown_backend():
    with pytest.raises(ConfigError, match="backend must be one of"):
        model_spec("dalle")


def test_check_spec_names_both_values():
    planned = ModelSpec("diffusers", "acme/x", None, 512, 8, source="assumed")
    check_spec(planned, ModelSpec("diffusers", "acme/x", None, 512, 8, source="loaded"))
    with pytest.raises(ModelError, match=r"native_size 1024.*native_size 512.*a guess"):
        check_spec(planned, ModelSpec("diffusers", "acme/x", None, 1024, 8))
    with pytest.raises(ModelError, match=r"size_multiple 1, but .* size_multiple 8"):
        check_spec(model_spec("tiny"), ModelSpec("opencv", "opencv-telea", None, 64, 1))


def test_check_spec_catches_a_loaded_model_that_differs(tiny_model_dir, tmp_path):
    """A real checkpoint whose UNet config says 128 (native 256) against the tiny spec (64)."""
    wide = tmp_path / "wide"
    shutil.copytree(tiny_model_dir, wide)
    unet = json.loads((wide / "unet" / "config.json").read_text())
    (wide / "unet" / "config.json").write_text(json.dumps({**unet, "sample_size": 128}))
    spec = model_spec("diffusers", str(wide))
    loaded = load_inpainter("diffusers", str(wide), device="cpu")
    assert spec.native_size == loaded.spec.native_size == 256
    check_spec(spec, loaded.spec)
    with pytest.raises(ModelError, match=r"native_size 256, but .* native_size 64"):
        check_spec(model_spec("tiny"), loaded.spec)
