"""batch-inpaint: distributed batch image inpainting with Stable Diffusion inpainting models."""

from .manifest import Manifest as Manifest

__version__ = "0.1.0"
