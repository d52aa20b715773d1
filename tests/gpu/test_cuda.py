"""CUDA checks on the tiny checkpoint: fp16, attention modes, OOM splitting, determinism.

Skipped without a GPU. Tolerances for fp16 were chosen, not measured on a GPU yet: the tiny
model's outputs are noise-like, so a few levels of 255 between attention kernels is expected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batch_inpaint.models import load_inpainter
from batch_inpaint.models.diffusers_backend import DiffusersInpainter
from batch_inpaint.params import GenerationParams
from tests.fixtures_models import small_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

PARAMS = GenerationParams(num_inference_steps=4)
FP16_TOLERANCE = 8  # levels of 255, fp16 sliced vs fused attention / batched vs alone


def run(inp, images, masks, params=PARAMS, seeds=None):
    n = len(images)
    return inp.inpaint(images, masks, params, ["background"] * n, [None] * n,
                       seeds or list(range(n)))  # fmt: skip


def diff(a, b) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def gpu_pair(tiny_model_dir):
    sliced = load_inpainter("tiny", str(tiny_model_dir), device="cuda", attention="slicing")
    sdpa = load_inpainter("tiny", str(tiny_model_dir), device="cuda", attention="sdpa",
                          channels_last=True)  # fmt: skip
    return sliced, sdpa


def test_fp16_is_the_cuda_default(gpu_pair):
    sliced, sdpa = gpu_pair
    assert sliced.device == "cuda" and sliced.dtype == torch.float16
    assert sliced.pipe.unet.dtype == torch.float16
    assert load_inpainter("tiny", device="auto").device == "cuda"


def test_fp16_slicing_and_sdpa_agree(gpu_pair):
    sliced, sdpa = gpu_pair
    images, masks = small_batch(2, 128, 128)
    for a, b in zip(run(sliced, images, masks), run(sdpa, images, masks), strict=True):
        assert a.dtype == np.uint8 and a.shape == (128, 128, 3)
        assert diff(a, b) <= FP16_TOLERANCE


def test_same_seed_same_output_on_gpu(gpu_pair):
    _, sdpa = gpu_pair
    images, masks = small_batch(3, 64, 96)
    first, second = run(sdpa, images, masks), run(sdpa, images, masks)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    alone = run(sdpa, images[1:2], masks[1:2], seeds=[1])[0]
    assert diff(alone, first[1]) <= FP16_TOLERANCE
    assert diff(first[0], run(sdpa, images[:1], masks[:1], seeds=[99])[0]) > 0


class OomOnBatches(DiffusersInpainter):
    def inpaint(self, images, *args):
        if len(images) > 1:
            torch.empty(1, device="cuda")  # touch the device, as a real batch would
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().inpaint(images, *args)


def test_oom_splits_the_batch_on_gpu(tiny_model_dir, gpu_pair):
    sliced, _ = gpu_pair
    images, masks = small_batch(4, 64, 64)
    oom = OomOnBatches(str(tiny_model_dir), device="cuda")
    args = (PARAMS, ["background"] * 4, [None] * 4, [5, 6, 7, 8])
    split = oom.inpaint_isolated(images, masks, *args)
    whole = sliced.inpaint(images, masks, *args)
    assert len(split) == 4
    for i in range(4):
        assert diff(split[i][0], whole[i]) <= FP16_TOLERANCE


def test_fp32_and_bf16_on_gpu(tiny_model_dir):
    images, masks = small_batch(1)
    for dtype in ("fp32", "bf16"):
        inp = load_inpainter("tiny", str(tiny_model_dir), device="cuda", dtype=dtype,
                             attention="auto", vae_tiling=True)  # fmt: skip
        assert inp.attention == "sdpa"
        assert run(inp, images, masks)[0].shape == (48, 64, 3)
