"""Detection fixtures: the tiny random checkpoints (Grounding DINO, PP-OCR det, SAM), written once
per session through `batch-inpaint make-tiny-model`, and small photo-like images."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_detect_models(tmp_path_factory):
    """{'detector': path, 'text-detector': path, 'segmenter': path}."""
    from batch_inpaint.cli import main

    root = tmp_path_factory.mktemp("tiny-detect")
    out = {}
    for kind in ("detector", "text-detector", "segmenter"):
        assert main(["make-tiny-model", "--kind", kind, str(root / kind)]) == 0
        out[kind] = str(root / kind)
    return out


@pytest.fixture(scope="session")
def tiny_detector(tiny_detect_models):
    from batch_inpaint.detect import GroundingDinoDetector

    return GroundingDinoDetector(tiny_detect_models["detector"], device="cpu")


@pytest.fixture(scope="session")
def tiny_text_detector(tiny_detect_models):
    from batch_inpaint.detect import PPOCRTextDetector

    return PPOCRTextDetector(tiny_detect_models["text-detector"], device="cpu")


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_detect_models):
    from batch_inpaint.detect import SamSegmenter

    return SamSegmenter(tiny_detect_models["segmenter"], device="cpu")


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB uint8 image with a few hard edges."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(img, (w // 4, h // 4), (w // 2, h // 2), (250, 250, 250), -1)
    return img


def same(a, b, tol: float = 1e-3) -> bool:
    """Detection lists equal up to float noise of a different batch size."""
    if len(a) != len(b):
        return False
    return all(
        x.label == y.label
        and abs(x.score - y.score) <= tol
        and np.allclose(x.box, y.box, atol=tol * 100)
        for x, y in zip(a, b, strict=True)
    )
