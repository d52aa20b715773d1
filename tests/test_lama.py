"""The lama backend on a random-weight LaMa of the real architecture (make-tiny-model --kind lama):
real loading through spandrel, real inference on the CPU, the CLI, the compat pipeline, object
storage, the Hub cache and a Ray job. The weights are random, so only plumbing and guarantees are
checked (shapes, determinism, bit-exact pixels outside the mask, refusals), never quality."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("spandrel", reason="the lama extra is not installed")

import torch  # noqa: E402

from batch_inpaint.errors import ConfigError, ModelError  # noqa: E402
from batch_inpaint.image.inpaint import inpaint_array  # noqa: E402
from batch_inpaint.models import load_inpainter, model_spec  # noqa: E402
from batch_inpaint.models.lama_tiny import TINY_LAMA_FILE, make_tiny_lama  # noqa: E402
from batch_inpaint.models.lama_weights import convert, read_state_dict  # noqa: E402
from batch_inpaint.params import (  # noqa: E402
    GenerationParams,
    GeometryOptions,
    InpaintOptions,
    MaskOptions,
)
from tests.fixtures_models import small_batch  # noqa: E402


@pytest.fixture(scope="module")
def lama_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fixtures_models: a second thread only waits on a busy 2-core box
    yield make_tiny_lama(tmp_path_factory.mktemp("models") / "tiny-lama")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lama_file(lama_dir) -> Path:
    return lama_dir / TINY_LAMA_FILE


@pytest.fixture(scope="module")
def lama(lama_dir):
    return load_inpainter("lama", str(lama_dir), device="cpu")


def run(inp, images, masks, params=GenerationParams(), prompts=None, seeds=None):
    n = len(images)
    return inp.inpaint(images, masks, params, prompts or ["background"] * n, [None] * n,
                       seeds or list(range(n)))  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the model --------------------------------------------------------------------------------
def test_tiny_lama_is_spandrels_lama_and_the_cli_writes_the_same_bytes(lama_file, tmp_path):
    import spandrel

    desc = spandrel.ModelLoader().load_from_state_dict(read_state_dict(lama_file))
    assert desc.architecture.id == "LaMa" and desc.purpose == "Inpainting"

    from batch_inpaint.cli import main

    assert main(["make-tiny-model", "--kind", "lama", str(tmp_path / "again")]) == 0
    assert sha(tmp_path / "again" / TINY_LAMA_FILE) == sha(lama_file)  # deterministic
    shutil.rmtree(tmp_path / "again")
    with pytest.raises(ConfigError, match="not an empty directory"):
        make_tiny_lama(lama_file)


def test_spec_answers_before_loading_and_matches_the_loaded_model(lama, lama_dir):
    spec = model_spec("lama", str(lama_dir))
    assert spec == lama.spec
    assert (spec.native_size, spec.size_multiple) == (None, 8)
    assert set(spec.ignores) == {"prompt", "negative_prompt", "num_inference_steps",
                                 "guidance_scale", "eta", "strength", "seed", "scheduler"}  # fmt: skip
    assert lama.describe() == {"backend": "lama", "model": str(lama_dir), "revision": None}
    assert lama.device == "cpu" and lama.dtype == torch.float32
    with pytest.raises(ConfigError, match="backend lama needs a model"):
        model_spec("lama")


def test_one_pass_per_batch_equals_one_image_at_a_time(lama):
    images, masks = small_batch(3, 48, 64)
    batch = run(lama, images, masks)
    assert [o.shape for o in batch] == [(48, 64, 3)] * 3 and batch[0].dtype == np.uint8
    for i in range(3):
        alone = run(lama, images[i : i + 1], masks[i : i + 1])[0]
        assert np.abs(alone.astype(int) - batch[i].astype(int)).max() <= 1
        keep = masks[i] == 0
        assert np.array_equal(batch[i][keep], images[i][keep])  # LaMa pastes its own fill only
        assert not np.array_equal(batch[i][~keep], images[i][~keep])


def test_prompts_steps_and_seeds_change_nothing_and_k_results_are_copies(lama):
    images, masks = small_batch(2, 32, 40)
    base = run(lama, images, masks)
    other = GenerationParams(prompt="a cat", num_inference_steps=3, guidance_scale=1.0,
                             strength=0.5, scheduler="ddim", num_images_per_prompt=2)  # fmt: skip
    out = run(lama, images, masks, other, prompts=["a cat", "a dog"], seeds=[5, 6])
    assert len(out) == 4
    for i in range(2):
        assert np.array_equal(out[2 * i], base[i]) and np.array_equal(out[2 * i + 1], base[i])


def test_inpaint_isolated_costs_only_the_image_that_fails(lama):
    images, masks = small_batch(3, 32, 32)
    images[1] = images[1].astype(np.float32)  # not uint8: the batch fails, then this image alone
    out = lama.inpaint_isolated(images, masks, GenerationParams(), ["x"] * 3, [None] * 3, [0, 1, 2])
    assert isinstance(out[1], ModelError) and "uint8" in str(out[1])
    for i in (0, 2):
        assert np.array_equal(out[i][0], run(lama, images[i : i + 1], masks[i : i + 1])[0])


def test_sides_under_16_are_padded_and_sizes_must_be_multiples_of_8(lama):
    img = np.full((8, 24, 3), 90, np.uint8)
    mask = np.zeros((8, 24), np.uint8)
    mask[2:6, 4:12] = 255
    assert run(lama, [img], [mask])[0].shape == (8, 24, 3)
    with pytest.raises(ConfigError, match="multiple of 8"):
        run(lama, [np.zeros((20, 20, 3), np.uint8)], [np.zeros((20, 20), np.uint8)])


@pytest.mark.parametrize("mode", ["full", "crop"])
def test_inpaint_array_keeps_every_pixel_outside_the_mask(lama, mode):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 403, 3), dtype=np.uint8)  # not multiples of 8
    mask = np.zeros((300, 403), bool)
    mask[20:50, 30:70] = True
    mask[230:260, 330:370] = True
    geometry = GeometryOptions(mode=mode, crop_size=64 if mode == "crop" else None,
                               max_side=200, merge_distance=8)  # fmt: skip
    options = InpaintOptions(mask=MaskOptions(dilate=2, feather=3), geometry=geometry)
    result = inpaint_array(image, mask, lama, options, seed=1)
    assert result.status == "ok" and result.image.shape == image.shape
    assert len(result.regions) == (2 if mode == "crop" else 1)
    if mode == "full":  # the frame scaled to max_side, sides rounded to multiples of 8
        assert result.regions[0].work_size == (200, 152)
    changed = np.any(result.image != image, axis=-1)
    grown = np.zeros_like(mask)
    grown[20 - 6 : 50 + 6, 30 - 6 : 70 + 6] = grown[230 - 6 : 260 + 6, 330 - 6 : 370 + 6] = True
    assert changed.any() and not changed[~grown].any()  # dilate 2 + feather 3 < 6


def test_cli_inpaint_with_backend_lama(lama_dir, tmp_path, capsys):
    from batch_inpaint.cli import main

    image = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 16:44] = 255
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    argv = ["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "-o",
            str(tmp_path / "out.png"), "--backend", "lama", "--model", str(lama_dir),
            "--device", "cpu", "--prompt", "ignored"]  # fmt: skip
    assert main(argv) == 0
    assert f"wrote {tmp_path / 'out.png'}" in capsys.readouterr().out
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(out[mask == 0], image[mask == 0])
    assert np.any(out[mask > 0] != image[mask > 0])


def test_compat_pipeline_takes_a_lama_weights_file_as_its_model(lama_file):
    from batch_inpaint.compat import OutputKeys, Tasks, pipeline

    pipe = pipeline(Tasks.image_inpainting, model=str(lama_file), device="cpu")
    assert pipe.inpainter.describe()["backend"] == "lama"
    image, masks = small_batch(1, 48, 64)
    out = pipe({"image": image[0], "mask": masks[0], "prompt": "ignored"})[OutputKeys.OUTPUT_IMG]
    keep = masks[0] == 0
    assert np.array_equal(out[:, :, ::-1][keep], image[0][keep])  # BGR, like cv2


def test_the_web_page_exports_a_job_config_that_loads_the_same_weights(lama, lama_dir):
    from batch_inpaint.web.handlers import reproduction_params

    job = reproduction_params(InpaintOptions(), 7, lama.describe())["job_config"]
    assert job["backend"] == "lama" and job["model"] == str(lama_dir)


# -- weights files: what is loaded and what is refused ------------------------------------------
class RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create `marker`
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    evil, marker = tmp_path / "evil.pth", tmp_path / "code-ran"
    torch.save({"model.model.1.bn_l.running_mean": torch.zeros(2), "x": RunsCode(str(marker))},
               evil)  # fmt: skip
    with pytest.raises(ModelError, match=f"{evil}.*weights-only"):
        load_inpainter("lama", str(evil), device="cpu")
    assert not marker.exists()


def test_refused_files_name_the_file(tmp_path, lama_file):
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ConfigError, match=r"w\.bin: \.bin files are not loaded"):
        load_inpainter("lama", str(tmp_path / "w.bin"), device="cpu")
    with pytest.raises(ConfigError, match=r"big-lama\.pt: \.pt files are not loaded"):
        load_inpainter("lama", str(tmp_path / "big-lama.pt"), device="cpu")  # TorchScript, usually

    cut = tmp_path / "cut.safetensors"
    with open(lama_file, "rb") as f:
        cut.write_bytes(f.read(1_000_000))
    with pytest.raises(ModelError, match=f"{cut}: not a readable safetensors file"):
        load_inpainter("lama", str(cut), device="cpu")

    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(other))
    with pytest.raises(ModelError, match=f"{other}: spandrel does not recognise"):
        load_inpainter("lama", str(other), device="cpu")

    two = tmp_path / "two"
    two.mkdir()
    (two / "a.safetensors").write_bytes(b"")
    (two / "b.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="several weights files"):
        load_inpainter("lama", str(two), device="cpu")
    with pytest.raises(ConfigError, match="no such file or folder"):
        load_inpainter("lama", str(tmp_path / "missing.safetensors"), device="cpu")


def test_a_training_checkpoint_loads_weights_only_and_converts(tmp_path, lama_file, lama):
    sd = read_state_dict(lama_file)
    ckpt = {  # the shape of LaMa's Lightning checkpoints: generator + discriminator + bookkeeping
        "state_dict": {**{k.replace("model.model", "generator.model"): v for k, v in sd.items()},
                       "discriminator.conv.weight": torch.zeros(1)},
        "epoch": 3, "pytorch-lightning_version": "1.2.9",
    }  # fmt: skip
    torch.save(ckpt, tmp_path / "best.ckpt")
    del sd, ckpt
    images, masks = small_batch(1, 32, 32)
    want = run(lama, images, masks)[0]
    from_ckpt = load_inpainter("lama", str(tmp_path / "best.ckpt"), device="cpu")
    assert np.array_equal(run(from_ckpt, images, masks)[0], want)
    out = convert(tmp_path / "best.ckpt", tmp_path / "big-lama.safetensors")
    (tmp_path / "best.ckpt").unlink()
    converted = load_inpainter("lama", str(out), device="cpu")
    assert np.array_equal(run(converted, images, masks)[0], want)


# -- where the weights come from --------------------------------------------------------------
def test_s3_file_and_prefix_are_fetched_once_into_the_cache(
    lama_file, lama, s3_bucket, s3_server, s3_storage_options, tmp_path
):
    from batch_inpaint.storage.store import Storage
    from tests.fixtures_s3 import put_objects, s3_client

    client = s3_client(s3_server)
    put_objects(s3_server, s3_bucket, {"models/lama/lama.safetensors": lama_file.read_bytes(),
                                       "models/lama/README.md": b"random weights"})  # fmt: skip
    storage, cache = Storage(s3_storage_options), tmp_path / "cache"
    images, masks = small_batch(1, 32, 32)
    want = run(lama, images, masks)[0]
    try:
        for uri in (
            f"s3://{s3_bucket}/models/lama/lama.safetensors",
            f"s3://{s3_bucket}/models/lama",
        ):
            inp = load_inpainter("lama", uri, device="cpu", storage=storage, cache_dir=cache)
            assert inp.spec == model_spec("lama", uri) and inp.weights.is_relative_to(cache)
            assert np.array_equal(run(inp, images, masks)[0], want)
        client.delete_object(Bucket=s3_bucket, Key="models/lama/lama.safetensors")
        again = load_inpainter("lama", f"s3://{s3_bucket}/models/lama/lama.safetensors",
                               device="cpu", storage=storage, cache_dir=cache)  # fmt: skip
        assert again.weights.is_file()  # from the cache: the object is gone
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # two 100 MB copies


def test_hub_id_with_a_pinned_revision_from_the_hub_cache(lama_file, lama, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-lama"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    os.symlink(lama_file, repo / "snapshots" / commit / "lama.safetensors")
    images, masks = small_batch(1, 32, 32)
    want = run(lama, images, masks)[0]
    for model in ("someone/tiny-lama", "someone/tiny-lama/lama.safetensors"):
        inp = load_inpainter("lama", model, revision=commit, device="cpu", cache_dir=tmp_path,
                             local_files_only=True)  # fmt: skip
        assert inp.describe() == {"backend": "lama", "model": model, "revision": commit}
        assert np.array_equal(run(inp, images, masks)[0], want)
    with pytest.raises(ModelError, match="could not fetch lama weights 'someone/other'"):
        load_inpainter("lama", "someone/other", revision=commit, device="cpu",
                       cache_dir=tmp_path, local_files_only=True)  # fmt: skip


# -- the job ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_job_with_backend_lama_gives_every_row_exactly_once(ray_local, lama_dir, tmp_path):
    import pyarrow.parquet as pq

    from batch_inpaint import run_job
    from batch_inpaint.config import JobConfig
    from tests.fixtures_ray import local_dataset, manifest_bytes

    src = tmp_path / "in"
    path, rows = local_dataset(src, 5, w=64, h=48)
    rows += [{"id": "missing", "image": "images/none.png", "mask": "masks/r000.png"}]
    path.write_bytes(manifest_bytes(rows))
    cfg = JobConfig(manifest=str(path), output=str(tmp_path / "out"), backend="lama",
                    model=str(lama_dir), device="cpu", mode="crop", crop_size=64,
                    flush_rows=2, progress_interval_s=0.0)  # fmt: skip
    run_job(cfg, echo=lambda *_: None)
    meta = pq.read_table(tmp_path / "out" / "metadata").to_pylist()
    assert sorted(r["id"] for r in meta) == sorted(r["id"] for r in rows)  # each exactly once
    by_id = {r["id"]: r for r in meta}
    assert by_id["missing"]["status"] == "error"
    assert {r["backend"] for r in meta} == {"lama"} and {r["model"] for r in meta} == {
        str(lama_dir)
    }
    for r in rows[:-1]:
        got = by_id[r["id"]]
        assert got["status"] == "ok", got
        out = np.asarray(Image.open(Path(cfg.output) / got["output"]).convert("RGB"))
        image = np.asarray(Image.open(src / r["image"]).convert("RGB"))
        keep = np.asarray(Image.open(src / r["mask"])) == 0
        assert np.array_equal(out[keep], image[keep])
