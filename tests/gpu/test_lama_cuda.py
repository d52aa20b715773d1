"""CUDA checks of the lama backend on the random-weight LaMa: fp32 by default, fp16/bf16 under
autocast close to the CPU's fp32, one forward pass per batch. Skipped without a GPU (or without
spandrel). Tolerances were chosen, not measured on a GPU yet; `python -m bench l2` measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("spandrel", reason="the lama extra is not installed")

from batch_inpaint.models import load_inpainter  # noqa: E402
from batch_inpaint.params import GenerationParams  # noqa: E402
from tests.fixtures_models import small_batch  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
TOLERANCE = {"fp32": 2, "fp16": 8, "bf16": 16}  # levels of 255 from the CPU's fp32


@pytest.fixture(scope="module")
def lama_dir(tmp_path_factory):
    from batch_inpaint.models.lama_tiny import make_tiny_lama

    return make_tiny_lama(tmp_path_factory.mktemp("models") / "tiny-lama")


def run(inp, images, masks):
    n = len(images)
    return inp.inpaint(images, masks, GenerationParams(), [""] * n, [None] * n, list(range(n)))


def diff(a, b) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_fp32_is_the_cuda_default_and_the_weights_are_on_the_gpu(lama_dir):
    inp = load_inpainter("lama", str(lama_dir), device="cuda")
    assert inp.on_gpu and inp.dtype == torch.float32
    assert next(inp.model.parameters()).is_cuda


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_each_precision_stays_close_to_the_cpu(lama_dir, dtype):
    images, masks = small_batch(4, 64, 64)
    cpu = run(load_inpainter("lama", str(lama_dir), device="cpu"), images, masks)
    gpu = load_inpainter("lama", str(lama_dir), device="cuda", dtype=dtype)
    batch = run(gpu, images, masks)
    for i, (a, b) in enumerate(zip(batch, cpu, strict=True)):
        assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
        assert diff(a, b) <= TOLERANCE[dtype], (dtype, i)
        keep = masks[i] == 0
        assert np.array_equal(a[keep], images[i][keep])
    assert diff(run(gpu, images[1:2], masks[1:2])[0], batch[1]) <= TOLERANCE[dtype]
