"""DiffusersInpainter on the tiny checkpoint: a real diffusers pipeline, a few steps, small images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models import TINY_MODEL_ID, load_inpainter
from batch_inpaint.models.diffusers_backend import DiffusersInpainter
from batch_inpaint.params import GenerationParams
from tests.fixtures_models import small_batch

FAST = GenerationParams(num_inference_steps=2)
# Measured on this CPU: a row alone and the same row in a batch of 3 agree bit for bit (0 levels).
# Allow one level of 255 for other CPUs/BLAS builds whose batched kernels round differently.
BATCH_TOLERANCE = 1


def run(inp, images, masks, params=FAST, prompts=None, negs=None, seeds=None):
    n = len(images)
    return inp.inpaint(
        images,
        masks,
        params,
        prompts or ["background"] * n,
        negs or [None] * n,
        seeds or list(range(1, n + 1)),
    )


def maxdiff(a, b) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_outputs_are_uint8_rgb_at_input_size(tiny_inpainter):
    images, masks = small_batch(2)
    out = run(tiny_inpainter, images, masks)
    assert len(out) == 2
    assert all(o.shape == (48, 64, 3) and o.dtype == np.uint8 for o in out)
    assert tiny_inpainter.native_size == 64 and tiny_inpainter.size_multiple == 8
    assert tiny_inpainter.describe() == {
        "backend": "tiny",
        "model": TINY_MODEL_ID,
        "revision": None,
    }


@pytest.mark.parametrize("scheduler", ["default", "euler_a"])
def test_row_alone_equals_row_in_batch(tiny_inpainter, scheduler):
    images, masks = small_batch(3)
    params = GenerationParams(num_inference_steps=2, scheduler=scheduler, eta=0.5)
    prompts, negs, seeds = ["a", "b c", "d"], [None, "blur", None], [11, 22, 33]
    batch = run(tiny_inpainter, images, masks, params, prompts, negs, seeds)
    for i in range(3):
        alone = run(tiny_inpainter, images[i : i + 1], masks[i : i + 1], params, prompts[i : i + 1],
                    negs[i : i + 1], seeds[i : i + 1])  # fmt: skip
        assert maxdiff(alone[0], batch[i]) <= BATCH_TOLERANCE


def test_seed_decides_the_result(tiny_inpainter):
    images, masks = small_batch(1)
    a = run(tiny_inpainter, images, masks, seeds=[5])[0]
    b = run(tiny_inpainter, images, masks, seeds=[5])[0]
    c = run(tiny_inpainter, images, masks, seeds=[6])[0]
    assert np.array_equal(a, b)
    assert maxdiff(a, c) > 0


def test_num_images_per_prompt(tiny_inpainter):
    images, masks = small_batch(2)
    one = run(tiny_inpainter, images, masks)
    three = run(tiny_inpainter, images, masks, GenerationParams(num_inference_steps=2,
                                                                num_images_per_prompt=3))  # fmt: skip
    assert len(three) == 6
    # The first output of each row uses the row's own seed, so it is the single-output result.
    assert maxdiff(three[0], one[0]) <= BATCH_TOLERANCE
    assert maxdiff(three[3], one[1]) <= BATCH_TOLERANCE
    assert maxdiff(three[0], three[1]) > 0 and maxdiff(three[1], three[2]) > 0


def test_prompt_and_negative_prompt(tiny_inpainter):
    images, masks = small_batch(1)
    base = run(tiny_inpainter, images, masks, prompts=["background"])[0]
    assert maxdiff(base, run(tiny_inpainter, images, masks, prompts=["a red car"])[0]) > 0
    empty = run(tiny_inpainter, images, masks, negs=[""])[0]
    assert np.array_equal(base, empty)  # None means ''
    assert maxdiff(base, run(tiny_inpainter, images, masks, negs=["blurry"])[0]) > 0


def test_eta_strength_and_guidance_change_the_result(tiny_inpainter):
    images, masks = small_batch(1)
    p = GenerationParams(num_inference_steps=4, scheduler="ddim")
    base = run(tiny_inpainter, images, masks, p)[0]
    for change in ({"eta": 1.0}, {"strength": 0.5}, {"guidance_scale": 1.0}):
        assert maxdiff(base, run(tiny_inpainter, images, masks, p.with_overrides(**change))[0]) > 0


def test_schedulers_are_cached_and_swapped_per_call(tiny_inpainter):
    images, masks = small_batch(1)
    default = tiny_inpainter.scheduler("default")
    for name in ("dpm++", "ddim", "euler_a"):
        out = run(tiny_inpainter, images, masks, FAST.with_overrides(scheduler=name))
        assert out[0].shape == (48, 64, 3)
        assert tiny_inpainter.scheduler(name) is tiny_inpainter.scheduler(name)
    assert type(tiny_inpainter.scheduler("dpm++")).__name__ == "DPMSolverMultistepScheduler"
    run(tiny_inpainter, images, masks)
    assert tiny_inpainter.pipe.scheduler is default
    assert type(default).__name__ == "PNDMScheduler"


def test_model_failure_is_a_model_error(tiny_inpainter):
    images, masks = small_batch(1)
    with pytest.raises(ModelError, match="diffusers pipeline failed"):
        run(tiny_inpainter, images, masks, GenerationParams(num_inference_steps=2, strength=0.01))


def test_bad_inputs_are_refused(tiny_inpainter):
    images, masks = small_batch(2)
    with pytest.raises(ConfigError, match="equally"):
        tiny_inpainter.inpaint(images, masks, FAST, ["a"], [None, None], [1, 2])
    with pytest.raises(ConfigError, match="multiple of 8"):
        run(tiny_inpainter, [images[0][:44]], [masks[0][:44]])
    with pytest.raises(ConfigError, match="image 1"):
        run(tiny_inpainter, [images[0], images[1][:40]], masks)


class OomOnBatches(DiffusersInpainter):
    """Runs out of 'GPU memory' whenever more than one image is asked for at once."""

    calls: list[int]

    def inpaint(self, images, *args):
        self.calls.append(len(images))
        if len(images) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().inpaint(images, *args)


def test_oom_splits_batch_down_to_single_images(tiny_model_dir, tiny_inpainter):
    images, masks = small_batch(3)
    args = (FAST, ["background"] * 3, [None] * 3, [7, 8, 9])
    oom = OomOnBatches(str(tiny_model_dir), device="cpu")
    oom.calls = []
    split = oom.inpaint_isolated(images, masks, *args)
    assert oom.calls == [3, 1, 2, 1, 1]
    whole = tiny_inpainter.inpaint(images, masks, *args)
    assert len(split) == 3
    for i in range(3):
        assert maxdiff(split[i][0], whole[i]) <= BATCH_TOLERANCE


def test_one_bad_image_costs_only_itself(tiny_inpainter):
    images, masks = small_batch(3)
    params = GenerationParams(num_inference_steps=2, num_images_per_prompt=2)
    bad = [images[0], images[1].astype(np.float32), images[2]]  # a float image fails alone
    bad[1] = bad[1][..., :2]
    out = tiny_inpainter.inpaint_isolated(bad, masks, params, ["a"] * 3, [None] * 3, [1, 2, 3])
    assert isinstance(out[1], ModelError)
    assert len(out[0]) == len(out[2]) == 2 and out[0][0].dtype == np.uint8


def test_attention_modes(tiny_model_dir):
    def processors(inp):
        return {type(p).__name__ for p in inp.pipe.unet.attn_processors.values()}

    sliced = load_inpainter("tiny", str(tiny_model_dir), device="cpu")
    assert sliced.attention == "slicing" and processors(sliced) == {"SlicedAttnProcessor"}
    sdpa = load_inpainter("tiny", str(tiny_model_dir), device="cpu", attention="sdpa")
    assert processors(sdpa) == {"AttnProcessor2_0"}
    auto = load_inpainter("tiny", str(tiny_model_dir), device="cpu", attention="auto",
                          vae_tiling=True, channels_last=True)  # fmt: skip
    assert auto.attention == "sdpa" and auto.pipe.vae.use_tiling
    assert (
        load_inpainter("tiny", str(tiny_model_dir), device="cpu", dtype="auto").dtype
        == torch.float32
    )
    images, masks = small_batch(1)
    a, b = run(sliced, images, masks)[0], run(auto, images, masks)[0]
    assert maxdiff(a, b) <= 2  # the same maths, summed in another order


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"backend": "onnx"}, "backend must be one of"),
        ({"attention": "flash"}, "attention must be one of"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"dtype": "fp16", "device": "cpu"}, "use fp32"),
        ({"dtype": torch.float16, "device": "cpu"}, "use fp32"),
        ({"dtype": "bf16", "device": "cpu"}, "bf16 is not supported on CPU"),
        ({"device": "tpu"}, "device must be one of"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_options_are_config_errors(tiny_model_dir, options, match):
    options = {"backend": "tiny", "model": str(tiny_model_dir), **options}
    with pytest.raises(ConfigError, match=match):
        load_inpainter(**options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_inpainter("tiny", str(tiny_model_dir), device="cuda")


def test_missing_models_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        DiffusersInpainter(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ModelError, match="could not load model 'someone/missing-model'"):
        DiffusersInpainter("someone/missing-model", device="cpu", local_files_only=True)


def test_uri_models_are_fetched_through_storage(monkeypatch, tmp_path, tiny_model_dir):
    seen = []

    def fetch_model_dir(uri, storage=None, cache_dir=None):
        seen.append((uri, storage, cache_dir))
        return tiny_model_dir

    import batch_inpaint.storage.model_cache as storage_module

    # The storage area tests the download itself (tests/storage/); here: that we go through it.
    monkeypatch.setattr(storage_module, "fetch_model_dir", fetch_model_dir)
    marker = object()
    inp = load_inpainter(
        "diffusers", "s3://models/tiny", device="cpu", storage=marker, cache_dir=tmp_path
    )
    assert seen == [("s3://models/tiny", marker, tmp_path)]
    assert inp.describe()["model"] == "s3://models/tiny" and inp.native_size == 64


def test_uri_model_end_to_end_through_the_real_storage_layer(tmp_path, tiny_model_dir):
    """A file:// URI goes through storage.fetch_model_dir for real (no stand-in)."""
    inp = load_inpainter("diffusers", tiny_model_dir.as_uri(), device="cpu", cache_dir=tmp_path)
    images, masks = small_batch(1)
    assert run(inp, images, masks)[0].shape == (48, 64, 3)


def test_opencv_backend_is_reachable():
    inp = load_inpainter("opencv", method="ns")
    assert inp.backend == "opencv" and inp.method == "ns"
    with pytest.raises(ConfigError, match="no_such"):
        load_inpainter("opencv", no_such=1)
