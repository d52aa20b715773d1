"""A tiny random SDXL-inpainting checkpoint, built in code (`make-tiny-model --kind sdxl DIR`).

The shape of diffusers/stable-diffusion-xl-1.0-inpainting-0.1 at toy size: two text encoders
(CLIPTextModel and CLIPTextModelWithProjection, whose hidden states are concatenated for the
UNet's cross-attention and whose pooled projection joins the size "time ids"), two tokenizers,
a 9-channel UNet with `addition_embed_type="text_time"`, a VAE whose config asks for the fp32
upcast (`force_upcast`, as the real one's does) and Euler. It loads through
AutoPipelineForInpainting as StableDiffusionXLInpaintPipeline, so `--backend diffusers --model
DIR` runs SDXL's code path end to end on a CPU in seconds; its fills are noise.
"""

from __future__ import annotations

import os
from pathlib import Path

from batch_inpaint.models.tiny import TINY_SEED, TINY_VOCAB_SIZE, UNET_SAMPLE_SIZE, VAE_BLOCKS

TINY_SDXL_ID = "batch-inpaint/tiny-sdxl-inpainting-v1"
_DONE = ".tiny-sdxl-complete"
TEXT_DIM = 32  # each text encoder's hidden size; the UNet attends to both: 2 * 32
TIME_EMBED_DIM = 8
# SDXL-inpainting's time ids: original size, crop corner, target size (6 numbers; no aesthetic
# score, requires_aesthetics_score False as in the real checkpoint), each embedded in
# TIME_EMBED_DIM, plus the second encoder's pooled projection.
TIME_IDS = 6


def build_tiny_sdxl_pipeline():
    """A StableDiffusionXLInpaintPipeline with small random weights (same bytes each time)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from batch_inpaint.models.tiny import _vocab

    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=UNET_SAMPLE_SIZE,
        in_channels=9,  # latents, mask, masked-image latents: a true inpainting UNet
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=TIME_IDS * TIME_EMBED_DIM + TEXT_DIM,
        cross_attention_dim=2 * TEXT_DIM,
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
        force_upcast=True,
    )
    torch.manual_seed(TINY_SEED)
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=TINY_VOCAB_SIZE,
        hidden_act="gelu",
        projection_dim=TEXT_DIM,
    )
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(TINY_SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    return StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer(vocab=_vocab(), merges=[], model_max_length=77),
        tokenizer_2=CLIPTokenizer(vocab=_vocab(), merges=[], model_max_length=77),
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )


def is_tiny_sdxl_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / _DONE).is_file()


def make_tiny_sdxl(path: str | os.PathLike) -> Path:
    """Write the tiny SDXL checkpoint (diffusers format, safetensors) to `path`; an existing
    complete one is left alone, a directory holding anything else is refused."""
    from batch_inpaint.models.tiny import write_checkpoint

    return write_checkpoint(
        path,
        lambda tmp: build_tiny_sdxl_pipeline().save_pretrained(tmp, safe_serialization=True),
        _DONE,
        "tiny random SDXL-inpainting checkpoint from batch_inpaint\n",
    )
