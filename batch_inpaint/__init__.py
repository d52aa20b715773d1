"""batch-inpaint: distributed batch image inpainting with Stable Diffusion inpainting models."""

__version__ = "0.1.0"
