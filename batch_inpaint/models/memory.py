"""An estimate of one model pass's peak memory per working size (diffusers backends), so the
planner can refuse a size that can't fit before a worker is killed for it.

    peak ≈ weights + batch × (K_PIX × C0 × P × bytes + K_ATT × (P / F²)²)

P: the working size's pixels; C0: channels of the VAE's full-resolution blocks; F: the VAE's
downscale factor (latent tokens T = P / F²); bytes: 2 for fp16/bf16, 4 for fp32. The first term
is the full-resolution activations (VAE encode/decode), the second the VAE mid-block's
single-head attention over T tokens, which grows with the square of the pixels.

K_PIX and K_ATT were fitted on CPU (fp32, one step) with the tiny checkpoint (C0 32, F 2) at
128² .. 512²: 52, 341, 1418 and 4298 MB above the loaded model at 128², 256², 384², 512² fit
1472 bytes/pixel + 0.91 bytes per token pair within 4% (384²) and 25% (128²). The SD2 figures
(bench/sd2.py: VAE channels 128..512, F 8, 1.29 B parameters) then give 3.4 GB at 512² fp16 and
9.7 GB at 1920×1080, in line with the model card's "fp16 + slicing fits 1920x1080 in 16 GB".
It is an estimate for a guard (max_model_memory_gb), not a measurement: fused attention on a GPU
needs less than the attention term says; it never says less than the activations need.
"""

from __future__ import annotations

from dataclasses import dataclass

K_PIX = 11.5  # tensors of C0 channels alive at full resolution (1472 B/px / (32 ch × 4 B))
K_ATT = 0.91  # bytes per pair of latent tokens in the VAE's attention


@dataclass(frozen=True)
class Arch:
    c0: int  # channels of the VAE's full-resolution blocks
    factor: int  # VAE downscale factor
    params: float  # parameters of UNet + VAE + text encoder


ARCH = {
    "diffusers": Arch(c0=128, factor=8, params=1.29e9),  # SD2-inpainting (bench/sd2.py)
    "tiny": Arch(c0=32, factor=2, params=0.0),  # models/tiny.py: VAE_BLOCKS (32, 64)
}


def pass_memory_gb(backend: str, work_w: int, work_h: int, batch: int, dtype_bytes: int):
    """Estimated peak GB of one pass of `batch` images at work_w × work_h; None when there is
    no estimate for the backend (opencv, lama: no check)."""
    arch = ARCH.get(backend)
    if arch is None:
        return None
    p = work_w * work_h
    tokens = p / arch.factor**2
    act = K_PIX * arch.c0 * p * dtype_bytes + K_ATT * tokens**2
    return (arch.params * dtype_bytes + batch * act) / 1e9
