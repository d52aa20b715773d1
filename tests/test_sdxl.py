"""SDXL-inpainting through the diffusers backend, on the tiny random SDXL checkpoint
(`make-tiny-model --kind sdxl`): its shape, its spec (native size from the configs, family sdxl),
the VAE upcast rule and the `vae` option, and the three ways in: `batch-inpaint inpaint`, the
compat pipeline and a Ray job. Random weights: plumbing and pixel guarantees, never quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_inpaint.cli import main
from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.models import load_inpainter, model_spec
from batch_inpaint.models.diffusers_backend import vae_upcast
from batch_inpaint.models.tiny_sdxl import is_tiny_sdxl_dir
from batch_inpaint.params import GenerationParams
from tests.fixtures_models import small_batch
from tests.fixtures_ray import box_mask, local_dataset, png, sample_image

STEPS = 2


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    """Written by the CLI, as a user would (one torch thread: see fixtures_models)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("models") / "tiny-sdxl"
    assert main(["make-tiny-model", "--kind", "sdxl", str(path)]) == 0
    yield path
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return load_inpainter("diffusers", str(sdxl_dir), device="cpu")


def photo_and_mask(root: Path, w: int = 80, h: int = 64) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "photo.png").write_bytes(png(sample_image(w, h, 3)))
    (root / "mask.png").write_bytes(png(box_mask(w, h, (10, 8, 50, 40))))
    return root / "photo.png", root / "mask.png"


def assert_kept_outside_the_mask(out: np.ndarray, image: Path, mask: Path) -> None:
    original = np.asarray(Image.open(image).convert("RGB"))
    keep = np.asarray(Image.open(mask).convert("L")) == 0
    assert out.shape == original.shape
    assert np.array_equal(out[keep], original[keep])
    assert not np.array_equal(out[~keep], original[~keep])  # something was filled


# -- the checkpoint and its spec ------------------------------------------------------------------
def test_tiny_sdxl_has_the_real_checkpoints_shape(sdxl_dir, sdxl, capsys):
    assert is_tiny_sdxl_dir(sdxl_dir)
    index = json.loads((sdxl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLInpaintPipeline"
    assert index["text_encoder"][1] == "CLIPTextModel"
    assert index["text_encoder_2"][1] == "CLIPTextModelWithProjection"
    assert {"tokenizer", "tokenizer_2"} <= set(index)
    unet = json.loads((sdxl_dir / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time" and unet["in_channels"] == 9
    assert not list(sdxl_dir.rglob("*.bin")), "safetensors only"
    assert type(sdxl.pipe).__name__ == "StableDiffusionXLInpaintPipeline"
    assert main(["make-tiny-model", "--kind", "sdxl", str(sdxl_dir / "unet")]) == 2
    assert "not an empty directory" in capsys.readouterr().err  # nothing overwritten


def test_spec_reads_the_native_size_from_the_configs_and_knows_the_family(sdxl_dir, sdxl, tmp_path):
    spec = model_spec("diffusers", str(sdxl_dir))
    assert (spec.native_size, spec.size_multiple, spec.source, spec.family) == (64, 8, "config",
                                                                                "sdxl")  # fmt: skip
    assert sdxl.spec == spec
    # the real checkpoint's configs: UNet sample_size 128, a VAE of four blocks -> 1024
    real = tmp_path / "xl"
    for name, cfg in (("unet", {"sample_size": 128, "in_channels": 9,
                                "addition_embed_type": "text_time"}),
                      ("vae", {"block_out_channels": [128, 256, 512, 512],
                               "force_upcast": True})):  # fmt: skip
        (real / name).mkdir(parents=True)
        (real / name / "config.json").write_text(json.dumps(cfg))
    xl = model_spec("diffusers", str(real))
    assert (xl.native_size, xl.family) == (1024, "sdxl")


# -- the VAE --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sdxl", "fp16", "given", "says", "upcast"),
    [
        (True, True, False, False, True),  # the checkpoint's VAE in fp16: always upcast
        (True, True, True, False, False),  # an fp16-safe VAE (its config: no upcast)
        (True, True, True, True, True),  # a VAE that asks for it
        (True, False, False, True, False),  # fp32 or bf16: nothing overflows
        (False, True, False, True, False),  # SD 1.x/2.x pipelines never upcast
    ],
)
def test_the_vae_upcast_rule(sdxl, fp16, given, says, upcast):
    assert vae_upcast(sdxl, fp16, given, says) is upcast


def test_the_vae_option_loads_another_vae_folder(sdxl_dir, tmp_path):
    import torch

    vae_only = tmp_path / "vae-fp16-fix"
    base = load_inpainter("diffusers", str(sdxl_dir), device="cpu")
    assert base.vae_upcast is False and base.pipe.vae.config.force_upcast is False  # fp32
    base.pipe.vae.register_to_config(force_upcast=False)
    with torch.no_grad():
        for p in base.pipe.vae.parameters():
            p.mul_(0.5)  # a different VAE: the fill must change
    base.pipe.vae.save_pretrained(vae_only, safe_serialization=True)
    other = load_inpainter("diffusers", str(sdxl_dir), device="cpu", vae=str(vae_only))
    assert other.vae_id == str(vae_only)
    images, masks = small_batch(1, 64, 64)
    args = (GenerationParams(num_inference_steps=STEPS), ["x"], [None], [7])
    fresh = load_inpainter("diffusers", str(sdxl_dir), device="cpu")
    assert not np.array_equal(other.inpaint(images, masks, *args)[0],
                              fresh.inpaint(images, masks, *args)[0])  # fmt: skip
    # a checkpoint folder works too (its vae/ is used)
    assert load_inpainter("diffusers", str(sdxl_dir), device="cpu", vae=str(sdxl_dir)).pipe.vae
    with pytest.raises(ConfigError, match="no such directory"):
        load_inpainter("diffusers", str(sdxl_dir), device="cpu", vae=str(tmp_path / "none"))


def test_vae_is_an_option_of_the_job_config_and_a_flag_that_other_backends_ignore(tmp_path):
    assert JobConfig(model="org/sdxl", vae="org/vae").to_dict()["vae"] == "org/vae"
    image, mask = photo_and_mask(tmp_path)
    out = tmp_path / "out.png"
    assert main(["inpaint", str(image), str(mask), "-o", str(out), "--backend", "opencv",
                 "--vae", str(tmp_path / "no-such-vae")]) == 0  # fmt: skip
    assert out.is_file()


# -- the three ways in ----------------------------------------------------------------------------
def test_batch_inpaint_inpaint_with_the_sdxl_checkpoint(sdxl_dir, tmp_path, capsys):
    image, mask = photo_and_mask(tmp_path)
    out = tmp_path / "out.png"
    code = main(["inpaint", str(image), str(mask), "-o", str(out), "--model", str(sdxl_dir),
                 "--device", "cpu", "--steps", str(STEPS), "--seed", "3"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert_kept_outside_the_mask(np.asarray(Image.open(out).convert("RGB")), image, mask)


def test_compat_pipeline_with_the_sdxl_checkpoint(sdxl_dir, tmp_path):
    from batch_inpaint.compat import OutputKeys, Tasks, pipeline

    image, mask = photo_and_mask(tmp_path)
    inpainting = pipeline(Tasks.image_inpainting, model=str(sdxl_dir), device="cpu")
    out = inpainting({"image": str(image), "mask": str(mask), "prompt": "background",
                      "num_inference_steps": STEPS})  # fmt: skip
    bgr = out[OutputKeys.OUTPUT_IMG]
    assert_kept_outside_the_mask(np.ascontiguousarray(bgr[:, :, ::-1]), image, mask)


@pytest.mark.slow
def test_job_with_the_sdxl_checkpoint_gives_every_row_once(ray_local, sdxl_dir, tmp_path):
    import pyarrow.parquet as pq

    from batch_inpaint import run_job

    src = tmp_path / "in"
    path, rows = local_dataset(src, 4, w=64, h=48)
    cfg = JobConfig(manifest=str(path), output=str(tmp_path / "out"), model=str(sdxl_dir),
                    device="cpu", steps=STEPS, flush_rows=2, progress_interval_s=0.0)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"], summary.get("problems")
    meta = pq.read_table(tmp_path / "out" / "metadata").to_pylist()
    assert sorted(r["id"] for r in meta) == sorted(r["id"] for r in rows)
    assert {r["status"] for r in meta} == {"ok"} and {r["model"] for r in meta} == {str(sdxl_dir)}
    for r in meta:
        row = next(x for x in rows if x["id"] == r["id"])
        out = np.asarray(Image.open(Path(cfg.output) / r["output"]).convert("RGB"))
        assert_kept_outside_the_mask(out, src / row["image"], src / row["mask"])


# -- the dry run's estimate -----------------------------------------------------------------------
def test_dry_run_counts_sdxl_flops(sdxl_dir, tmp_path):
    from batch_inpaint.job.driver import cost
    from batch_inpaint.job.driver.estimate import plan_job

    manifest, _ = local_dataset(tmp_path / "in", 2, w=64, h=64)
    cfg = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), model=str(sdxl_dir))
    d = plan_job(cfg, records_dir=tmp_path / "no-records")
    e = d["estimate"]
    assert d["model"]["family"] == "sdxl" and "SDXL-inpainting UNet FLOPs" in e["flops_source"]
    assert any("SDXL-inpainting-sized model" in n for n in e["notes"])
    # one 64² pass per row: 50 steps with guidance, SDXL's UNet, SD2's VAE (scaled by pixels)
    flops = cost.SDFlops(None, "sdxl")
    assert e["tflop_per_row"] == pytest.approx(flops.per_pass(64 * 64, 50, 7.5, 1.0), rel=1e-2)
    assert flops.per_pass(1024 * 1024, 50, 7.5, 1.0) == pytest.approx(
        100 * 6.762 + cost.SD_VAE_512 * 4, rel=1e-3
    )
    assert flops.parts(1024 * 1024)[0] > 1.4 * cost.SDFlops(None).parts(1024 * 1024)[0]
