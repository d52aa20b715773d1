"""Model fixtures: the tiny checkpoint, built once per test session."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A directory holding the tiny random SD-inpainting checkpoint (diffusers format)."""
    import torch

    from batch_inpaint.models.tiny import make_tiny_model

    # The tiny model gains nothing from a second thread, and on a busy 2-core machine torch's
    # threads wait on each other: one call took 6-12 s with 2 threads, 0.75 s with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd-inpainting")
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_inpainter(tiny_model_dir):
    """A DiffusersInpainter on the tiny checkpoint (CPU, fp32), shared by the session's tests."""
    from batch_inpaint.models import load_inpainter

    return load_inpainter("tiny", str(tiny_model_dir), device="cpu")


def small_batch(n: int = 3, height: int = 48, width: int = 64, seed: int = 0):
    """n random RGB uint8 images with rectangular 0/255 masks, all different."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]
    masks = []
    for i in range(n):
        m = np.zeros((height, width), np.uint8)
        m[height // 6 : height // 2 + 4 * i, width // 8 + 3 * i : width * 3 // 4] = 255
        masks.append(m)
    return images, masks
