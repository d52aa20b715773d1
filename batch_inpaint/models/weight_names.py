"""Which weight files are loaded, told from their names alone (no I/O, no torch): the model spec
refuses a refused file type before any work, the lama loader before reading a byte."""

from __future__ import annotations

from pathlib import Path

from batch_inpaint.errors import ConfigError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".ckpt")  # torch.load(weights_only=True) only
WEIGHT_SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES


def suffix_of(name: str) -> str:
    return Path(name.split("?")[0]).suffix.lower()


def check_weights_name(name: str) -> None:
    """ConfigError for a file name whose type is refused (no I/O): a name without a suffix may
    be a folder, a prefix or a Hub repo."""
    from batch_inpaint.storage.uri import redact_uri

    suffix = suffix_of(name)
    if suffix and suffix not in WEIGHT_SUFFIXES and looks_like_file(name):
        name = redact_uri(name)
        raise ConfigError(
            f"lama weights {name}: {suffix} files are not loaded (they can run code). Use a "
            ".safetensors file (.pth/.ckpt are read with torch's weights-only loader), or convert "
            f"a file you trust: python -m batch_inpaint.models.lama_weights {name} "
            "OUT.safetensors --trust (docs/models.md)"
        )


def looks_like_file(name: str) -> bool:
    # 'org/model.v2' is a Hub repo, not a file: only known weight-ish suffixes count as files.
    return suffix_of(name) in (*WEIGHT_SUFFIXES, ".pt", ".bin", ".pkl", ".pickle", ".onnx",
                               ".zip", ".npz", ".h5", ".gguf", ".jit", ".tar")  # fmt: skip
