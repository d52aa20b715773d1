"""Tiny random checkpoints of the detection models' real architectures, built from their configs
and written with save_pretrained (safetensors), so tests and offline tries load them through the
same transformers code as real weights: `batch-inpaint make-tiny-model --kind detector DIR`
(Grounding DINO), `--kind text-detector` (PP-OCRv6 medium det), `--kind segmenter` (SAM).

Same bytes every time (fixed seeds). Random weights detect random boxes: tests that need known
boxes use threshold 0 with max_detections, or BoxesDetector (docs/masks.md).

`real=True` builds the published architecture at full size (random weights) for benchmarks:
what it computes is what the real model computes."""

from __future__ import annotations

import os
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch_inpaint.errors import ConfigError
from batch_inpaint.models.tiny import write_checkpoint

SEED = 0
_DONE = ".tiny-complete"  # written last: a folder holding it is a complete checkpoint


def _bert_vocab() -> list[str]:
    """A character-level WordPiece vocabulary: every lowercase phrase tokenizes, no download."""
    chars = string.ascii_lowercase + string.digits
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *chars]
    return words + [f"##{c}" for c in chars]


def build_detector(real: bool = False) -> tuple[Any, Any]:
    """(GroundingDinoForObjectDetection, GroundingDinoProcessor) with random weights."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(_bert_vocab()) + "\n")
        tokenizer = BertTokenizer(str(vocab), model_max_length=256)
    if real:  # IDEA-Research/grounding-dino-tiny: Swin-T, BERT-base, 900 queries, 800 px
        config = GroundingDinoConfig()
        image_processor = GroundingDinoImageProcessorPil()
    else:
        config = GroundingDinoConfig(
            backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                       window_size=7, out_features=["stage2", "stage3", "stage4"]),
            text_config=BertConfig(vocab_size=len(_bert_vocab()), hidden_size=32,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=37, max_position_embeddings=256),
            d_model=32, encoder_layers=1, decoder_layers=2,  # 2: the box heads are tied from 2 on
            encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
            decoder_attention_heads=2, num_queries=30, num_feature_levels=3, encoder_n_points=2,
            decoder_n_points=2,
        )  # fmt: skip
        image_processor = GroundingDinoImageProcessorPil(
            size={"shortest_edge": 96, "longest_edge": 160}
        )
    torch.manual_seed(SEED)
    model = GroundingDinoForObjectDetection(config).eval()
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_text_detector(real: bool = False) -> Any:
    """A PP-OCR text detection model with random weights: PP-OCRv6 medium's architecture with
    16 channels (tiny), or PP-OCRv5 mobile's published config (real: the one transformers'
    defaults build without a checkpoint)."""
    import torch
    from transformers import (
        AutoModelForObjectDetection,
        PPOCRV5MobileDetConfig,
        PPOCRV6MediumDetConfig,
    )

    if real:
        config = PPOCRV5MobileDetConfig()
    else:
        ratios = {"long": 7, "mid": 5, "short": 3}
        block: dict[str, Any] = {"reduce_channel": [1, 1, 0], "return_channel": [1, 1, 0]}
        for name, k in ratios.items():
            p = k // 2
            block[f"vertical_long_to_small_conv_{name}ratio"] = [[k, 1], [1, 1], [p, 0]]
            block[f"horizontal_small_to_long_conv_{name}ratio"] = [[1, k], [1, 1], [0, p]]
            block[f"symmetric_conv_long_{name}ratio"] = [[k, k], [1, 1], [p, p]]
        c = 16
        backbone = {
            "model_type": "pp_lcnet_v4",
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
            "out_indices": [1, 2, 3, 4],
            "stem_channels": [3, c, c],
            "stem_type": "large",
            "block_configs": [[[3, c, c, 1, False]],
                              [[3, c, c, 2, False], [3, c, c, 1, False]],
                              [[3, c, c, 2, False], [3, c, c, 1, False]],
                              [[3, c, c, 2, False], [5, c, c, 1, False]]],
        }  # fmt: skip
        config = PPOCRV6MediumDetConfig(
            backbone_config=backbone, neck_out_channels=c, intraclass_block_number=4,
            intraclass_block_config=block, scale_factor=2, scale_factor_list=[1, 2, 4, 8],
            kernel_list=[3, 2, 2],
        )  # fmt: skip
    torch.manual_seed(SEED)
    return AutoModelForObjectDetection.from_config(config).eval()


def build_segmenter(real: bool = False) -> tuple[Any, Any]:
    """(SamModel, SamProcessor) with random weights: SAM ViT-B (real) or a 64 px one."""
    import torch
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    if real:
        config, image_processor = SamConfig(), SamImageProcessorPil()
    else:
        side = 64
        config = SamConfig(
            vision_config=SamVisionConfig(hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=37,
                                          image_size=side, patch_size=8, output_channels=16,
                                          num_pos_feats=8, window_size=4, global_attn_indexes=[1],
                                          mlp_dim=37),
            prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=side,
                                                         patch_size=8, mask_input_channels=4),
            mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, mlp_dim=32,
                                                     iou_head_hidden_dim=16),
        )  # fmt: skip
        image_processor = SamImageProcessorPil(
            size={"longest_edge": side}, pad_size={"height": side, "width": side}
        )
    torch.manual_seed(SEED)
    return SamModel(config).eval(), SamProcessor(image_processor=image_processor)


def _save_detector(path: Path) -> None:
    model, processor = build_detector()
    model.save_pretrained(path)
    processor.save_pretrained(path)


def _save_text_detector(path: Path) -> None:
    import json

    build_text_detector().save_pretrained(path)
    # The image processor's settings, as PP-OCR checkpoints ship them; 128 px keeps it quick.
    pre = {"image_processor_type": "PPOCRV5ServerDetImageProcessor", "limit_side_len": 128,
           "limit_type": "max", "max_side_limit": 4000, "image_mean": [0.406, 0.456, 0.485],
           "image_std": [0.225, 0.224, 0.229]}  # fmt: skip
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")


def _save_segmenter(path: Path) -> None:
    model, processor = build_segmenter()
    model.save_pretrained(path)
    processor.save_pretrained(path)


KINDS: dict[str, Callable[[Path], None]] = {
    "detector": _save_detector,
    "text-detector": _save_text_detector,
    "segmenter": _save_segmenter,
}


def make_tiny(kind: str, path: str | os.PathLike) -> Path:
    """Write the tiny `kind` checkpoint to `path` (new or empty) and return it; a complete one
    already there is kept, anything else there is refused."""
    if kind not in KINDS:
        raise ConfigError(f"tiny model kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def write(tmp: Path) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        KINDS[kind](tmp)

    note = f"tiny random {kind} checkpoint from batch_inpaint\n"
    return write_checkpoint(path, write, _DONE, note)
