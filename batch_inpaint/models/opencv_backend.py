"""Classical inpainting with OpenCV (Telea or Navier-Stokes): CPU, instant, no weights.

Good for removing small marks (scratches, watermarks, sensor dust) and as a fast, deterministic
backend for tests. It ignores prompts, seeds and the diffusion parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models.base import Inpainter
from batch_inpaint.models.spec import FILL_IGNORES
from batch_inpaint.params import GenerationParams

METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


class OpenCVInpainter(Inpainter):
    """cv2.inpaint behind the Inpainter interface.

    native_size None and size_multiple 1: any size is native, so geometry sends full frames at
    their own size (up to max_side) and crops without resampling.
    """

    backend = "opencv"
    native_size = None
    size_multiple = 1
    ignores = FILL_IGNORES  # every generation field but num_images_per_prompt
    input_error = ModelError  # a bad batch is the model's failure here, as it always was

    def __init__(self, method: str = "telea", radius: int = 3):
        if method not in METHODS:
            raise ConfigError(f"opencv method must be one of {tuple(METHODS)}, got {method!r}")
        if not isinstance(radius, int) or isinstance(radius, bool) or not 1 <= radius <= 64:
            raise ConfigError(f"opencv radius must be an integer in [1, 64], got {radius!r}")
        self.method = method
        self.radius = radius
        self.model_id = f"opencv-{method}"
        self.revision = None  # nothing to pin; describe() names the OpenCV version

    def describe(self) -> dict:
        return {
            **super().describe(),
            "method": self.method,
            "radius": self.radius,
            "opencv_version": cv2.__version__,
        }

    def inpaint(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        params: GenerationParams,
        prompts: Sequence[str],
        negative_prompts: Sequence[str | None],
        seeds: Sequence[int],
    ) -> list[np.ndarray]:
        self.check_batch(images, masks, prompts, negative_prompts, seeds)
        out = []
        for image, mask in zip(images, masks, strict=True):
            m = (np.asarray(mask) > 0).astype(np.uint8) * 255
            result = cv2.inpaint(np.ascontiguousarray(image), m, self.radius, METHODS[self.method])
            # Deterministic: every requested variant is the same picture (the first not copied).
            out += [result] + [result.copy() for _ in range(params.num_images_per_prompt - 1)]
        return out
