"""Masks as PNG bytes, written one way everywhere (detect's masks/, the job's masks/, the detect
stage's column, the web page's downloads): 0/255 greyscale, which `mask_from_image` reads back."""

from __future__ import annotations

import io

import numpy as np


def encode_mask(mask: np.ndarray) -> bytes:
    """A 0/255 greyscale PNG of a mask (anything non-zero is masked)."""
    from PIL import Image

    buf = io.BytesIO()
    a = np.asarray(mask).astype(bool).astype(np.uint8) * 255
    Image.fromarray(a, "L").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """The bool mask of encode_mask's bytes (grey above 127 is masked)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L")) > 127
