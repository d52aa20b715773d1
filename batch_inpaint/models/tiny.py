"""A tiny random Stable Diffusion inpainting checkpoint, built in code.

Tests and offline demos load it through exactly the same diffusers code path as real weights, so
the whole tool runs end to end without a download (about 7 MB on disk, seconds on a CPU). The
images it makes are noise-like: it proves plumbing, not quality.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

from batch_inpaint.errors import ConfigError

TINY_SEED = 0
TINY_MODEL_ID = "batch-inpaint/tiny-sd-inpainting-v1"
# The checkpoint's shape, also read by models.spec without building it: native side
# UNET_SAMPLE_SIZE * 2 ** (len(VAE_BLOCKS) - 1) = 64 px.
UNET_SAMPLE_SIZE = 32
VAE_BLOCKS = (32, 64)
# Written last: a directory holding it is a complete checkpoint (a crash mid-write leaves none).
_DONE = ".tiny-complete"
TINY_VOCAB_SIZE = 1000


def _vocab() -> dict[str, int]:
    """Characters, with and without the end-of-word suffix, plus CLIP's special tokens."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = string.ascii_lowercase + string.digits + string.punctuation
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return vocab


def build_tiny_pipeline():
    """A StableDiffusionInpaintPipeline with small random weights (fixed seed: same bytes each time)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=UNET_SAMPLE_SIZE,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    torch.manual_seed(TINY_SEED)
    vae = AutoencoderKL(
        block_out_channels=list(VAE_BLOCKS),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=128,
    )
    torch.manual_seed(TINY_SEED)
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=TINY_VOCAB_SIZE,
        hidden_act="gelu",
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_config)
    # model_max_length=77: without it the pipeline's tokenizer call fails with
    # "OverflowError: int too big to convert".
    tokenizer = CLIPTokenizer(vocab=_vocab(), merges=[], model_max_length=77)
    # steps_offset=1 is what the pipeline would rewrite it to anyway (with a FutureWarning).
    scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1)
    return StableDiffusionInpaintPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def is_tiny_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / _DONE).is_file()


def make_tiny_model(path: str | os.PathLike) -> Path:
    """Write the tiny checkpoint (diffusers format, safetensors) to `path` and return it.

    Deterministic: the same weights every time. An existing complete checkpoint is left alone;
    a directory holding anything else is refused rather than overwritten.
    """
    return write_checkpoint(
        path,
        lambda tmp: build_tiny_pipeline().save_pretrained(tmp, safe_serialization=True),
        _DONE,
        "tiny random SD-inpainting checkpoint from batch_inpaint\n",
    )


def write_checkpoint(
    path: str | os.PathLike, write: Callable[[Path], None], marker: str, note: str
) -> Path:
    """`write(folder)` into `path` (new or empty), then `marker` (holding `note`); returns it.

    A complete checkpoint already there (it holds `marker`) is left alone; a path holding
    anything else is refused rather than overwritten. Built next to the target and renamed into
    place, so readers never see half a checkpoint; a racing writer that wins is as good.
    """
    path = Path(path)
    if (path / marker).is_file():
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"{path} exists and is not an empty directory; choose a new directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        (tmp / marker).write_text(note)
        os.replace(tmp, path)  # POSIX rename: also replaces an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (path / marker).is_file():  # another process won the race: its checkpoint is as good
            return path
        raise
    return path


def default_tiny_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where load_inpainter('tiny') keeps its checkpoint: under cache_dir, else the temp dir."""
    base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "batch-inpaint"
    return base / "tiny-sd-inpainting-v1"
