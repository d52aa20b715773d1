"""The tiny checkpoint: deterministic, safetensors only, loadable offline through diffusers."""

from __future__ import annotations

import hashlib
import json

import pytest

from batch_inpaint.errors import ConfigError
from batch_inpaint.models import TINY_MODEL_ID, load_inpainter
from batch_inpaint.models.tiny import default_tiny_dir, is_tiny_model_dir, make_tiny_model


def digests(path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def test_layout_follows_the_recipe(tiny_model_dir):
    files = digests(tiny_model_dir)
    weights = [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".ckpt"))]
    assert weights and all(f.endswith(".safetensors") for f in weights)
    assert sum(f.stat().st_size for f in tiny_model_dir.rglob("*")) < 12_000_000
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    unet = json.loads((tiny_model_dir / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 9 and unet["out_channels"] == 4
    assert unet["block_out_channels"] == [32, 64] and unet["cross_attention_dim"] == 32
    assert unet["use_linear_projection"] is True
    text = json.loads((tiny_model_dir / "text_encoder" / "config.json").read_text())
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (
        32,
        5,
        4,
    )
    tok = json.loads((tiny_model_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok["model_max_length"] == 77
    sched = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "PNDMScheduler" and sched["skip_prk_steps"] is True


def test_same_weights_every_time(tmp_path, tiny_model_dir):
    again = make_tiny_model(tmp_path / "again")
    a, b = digests(tiny_model_dir), digests(again)
    weights = [f for f in a if f.endswith(".safetensors")]
    assert weights and all(a[f] == b[f] for f in weights)


def test_existing_checkpoint_is_reused_and_other_dirs_refused(tmp_path, tiny_model_dir):
    before = digests(tiny_model_dir)
    assert make_tiny_model(tiny_model_dir) == tiny_model_dir
    assert digests(tiny_model_dir) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty directory"):
        make_tiny_model(busy)
    assert not is_tiny_model_dir(busy) and (busy / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_tiny_model_dir(make_tiny_model(empty))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_load_inpainter_tiny_builds_under_cache_dir(tmp_path):
    inp = load_inpainter("tiny", cache_dir=tmp_path, device="cpu")
    assert is_tiny_model_dir(default_tiny_dir(tmp_path))
    assert default_tiny_dir(tmp_path).parent == tmp_path
    assert inp.backend == "tiny" and inp.model_id == TINY_MODEL_ID
    assert type(inp).__name__ == "DiffusersInpainter"
    assert type(inp.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert inp.pipe.tokenizer("background").input_ids[0] == 0  # <|startoftext|>
