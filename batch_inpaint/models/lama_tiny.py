"""A random-weight LaMa for tests and offline tries: `batch-inpaint make-tiny-model --kind lama DIR`.

It is the real architecture, not a shrunken one: spandrel builds LaMa only in big-lama's shape
(its loader refuses a state dict with fewer blocks or channels), so the file holds all 51 M
parameters, stored in fp16 (~100 MB) and loaded as fp32. It goes through exactly the loading and
inference path of real weights; its fill is a smooth guess, not a learned one.
"""

from __future__ import annotations

import os
from pathlib import Path

from batch_inpaint.errors import ConfigError
from batch_inpaint.models.tiny import write_checkpoint

TINY_LAMA_SEED = 0
TINY_LAMA_FILE = "lama.safetensors"
_DONE = ".tiny-lama-complete"  # written last: a folder holding it is complete


def is_tiny_lama_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / _DONE).is_file()


def tiny_lama_state_dict() -> dict:
    """LaMa's state dict with seeded random weights (same bytes each time), fp16 floats."""
    import torch

    try:
        from spandrel.architectures.LaMa import LaMa
    except ImportError as exc:
        from batch_inpaint.models.lama_weights import INSTALL_HINT

        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None

    torch.manual_seed(TINY_LAMA_SEED)
    model = LaMa(in_nc=4, out_nc=3)
    return {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }


def make_tiny_lama(path: str | os.PathLike) -> Path:
    """Write the random LaMa to `path`/lama.safetensors and return the folder. An existing
    complete one is left alone; a folder holding anything else is refused."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        # One metadata key: safetensors writes a dict of several in hash order (other bytes).
        save_file(tiny_lama_state_dict(), str(tmp / TINY_LAMA_FILE), metadata={"format": "pt"})

    return write_checkpoint(path, write, _DONE, "random-weight LaMa from batch_inpaint\n")
