"""LaMa weights: where the file is (local, object storage, Hub) and how it is read without running
code from it.

safetensors is the default and the only format read without question; `.pth` and `.ckpt` are read
with torch's weights-only unpickler (plain tensors and containers, no code); anything else is
refused before a byte is read. spandrel recognises the architecture from the state dict.

Convert a checkpoint you trust to safetensors with
`python -m batch_inpaint.models.lama_weights IN OUT.safetensors` (see docs/models.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from batch_inpaint.errors import ConfigError, ModelError
from batch_inpaint.models.weight_names import (
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    WEIGHT_SUFFIXES,
    check_weights_name,
    looks_like_file,
    suffix_of,
)

ARCHITECTURE = "LaMa"  # spandrel's id of the architecture this backend runs
INSTALL_HINT = "the lama backend needs spandrel and torchvision: pip install 'batch-inpaint[lama]'"


# -- where the file is ---------------------------------------------------------------------
def resolve_weights(
    model: str | os.PathLike,
    revision: str | None = None,
    storage: Any = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local weights file for `model`: a file, a folder holding one weights file, an
    object-storage URI of either (copied once into the model cache), or a Hub id ('org/name'
    takes the repo's one .safetensors file, 'org/name/path/file.ext' that file) at `revision`."""
    from batch_inpaint.storage.uri import local_path, redact_uri, uri_scheme

    given = os.fspath(model)
    check_weights_name(given)
    if uri_scheme(given) not in ("", "file"):
        from batch_inpaint.storage.model_cache import fetch_model_dir
        from batch_inpaint.storage.store import Storage

        store = storage if isinstance(storage, Storage) else Storage(storage)
        if suffix_of(given) in WEIGHT_SUFFIXES:
            return fetch_model_file(given, store, cache_dir)
        return pick_weights(fetch_model_dir(given, store, cache_dir), redact_uri(given))
    path = Path(local_path(given))
    if path.is_file():
        return path
    if path.is_dir():
        return pick_weights(path, given)
    if (
        given.startswith(("/", ".", "~", "file://"))
        or given.count("/") < 1
        or (given.count("/") == 1 and looks_like_file(given))
    ):
        raise ConfigError(
            f"lama weights {given}: no such file or folder (and not a Hub id org/name)"
        )
    return _hub_file(given, revision, cache_dir, local_files_only)


def pick_weights(folder: Path, given: str) -> Path:
    """The one weights file in a folder: its .safetensors file, else its one .pth/.ckpt."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    for suffixes in (SAFE_SUFFIXES, PICKLE_SUFFIXES):
        found = [p for p in files if p.suffix.lower() in suffixes]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ConfigError(
                f"lama weights {given}: several weights files ({names}); name the one to load"
            )
    names = ", ".join(p.name for p in files) or "nothing"
    raise ConfigError(
        f"lama weights {given}: no .safetensors (or .pth/.ckpt) file in it; found {names}"
    )


def fetch_model_file(uri: str, storage: Any, cache_dir: str | os.PathLike | None = None) -> Path:
    """One object copied once per machine into the model cache (storage.model_cache's locking
    and completion marker), returned as a local path."""
    from batch_inpaint.storage.model_cache import cached_copy

    uri = storage.check(uri)
    name = Path(uri.split("?")[0]).name

    def fill(tmp: Path) -> str:
        storage.download(uri, tmp / name)
        return name

    return cached_copy(uri, storage, cache_dir, fill) / name


def _hub_file(given: str, revision: str | None, cache_dir, local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    parts = given.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    kwargs = dict(revision=revision, local_files_only=local_files_only)
    if cache_dir:
        kwargs["cache_dir"] = str(cache_dir)
    rev = f" at revision {revision}" if revision else ""
    if not local_files_only:  # offline and not cached: say so now, not after Hub retries
        from batch_inpaint.models.availability import model_problem

        why = model_problem("lama", given, revision, cache_dir and str(cache_dir))
        if why:
            raise ModelError(why)
    try:
        if filename:
            return Path(hf_hub_download(repo, filename, **kwargs))
        # Only safetensors files come down when no file is named.
        folder = snapshot_download(repo, allow_patterns=["*.safetensors"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - every Hub failure says which model and why
        raise ModelError(
            f"could not fetch lama weights {given!r}{rev} from the Hub: {type(exc).__name__}: "
            f"{exc}. Pass a local file, an s3:// URI, or a reachable Hub id (pin a revision)."
        ) from exc
    return pick_weights(Path(folder), f"{given}{rev}")


# -- reading it ----------------------------------------------------------------------------
def check_local_weights(model: str | os.PathLike) -> None:
    """A weights file on this machine (or a folder holding one) read as the model actors read
    it (read_state_dict: safetensors, or torch's weights-only unpickler; no code runs), so that a
    damaged or refused file stops a run on the driver with a ConfigError (exit 2) instead of
    failing in every actor after Ray started. Hub ids and object-storage URIs: left to the actors."""
    from batch_inpaint.storage.uri import local_path, uri_scheme

    given = os.fspath(model)
    if uri_scheme(given) not in ("", "file"):
        return
    check_weights_name(given)
    path = Path(local_path(given))
    if path.is_dir():
        path = pick_weights(path, given)
    elif not path.is_file():
        return
    try:
        tensors_of(read_state_dict(path), path)
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    except ModelError as exc:
        raise ConfigError(f"config field 'model': {exc}") from None


def read_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of a weights file, read without running code from it (CPU)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        check_weights_name(str(path))
        raise ConfigError(f"lama weights {path}: not a .safetensors, .pth or .ckpt file")
    if suffix in SAFE_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - truncated, not safetensors, unreadable
            raise ModelError(
                f"lama weights {path}: not a readable safetensors file "
                f"({type(exc).__name__}: {exc}); download it again or convert it (docs/models.md)"
            ) from None
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler refused it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"lama weights {path}: refused by torch's weights-only loader ({type(exc).__name__}: "
            f"{first[:300]}). Nothing was loaded. If you trust the file, convert it to "
            "safetensors: python -m batch_inpaint.models.lama_weights IN OUT.safetensors "
            "--trust (docs/models.md)"
        ) from None
    return tensors_of(obj, path)


def tensors_of(obj: Any, path: Any) -> dict:
    """The generator's tensors of a loaded checkpoint: a state dict, or one wrapped the way
    LaMa's Lightning checkpoints are (state_dict -> generator.*, discriminator.*, losses)."""
    import torch
    from spandrel import canonicalize_state_dict

    if not isinstance(obj, dict):
        raise ModelError(f"lama weights {path}: holds a {type(obj).__name__}, not a state dict")
    sd = canonicalize_state_dict(obj)
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("generator.") for k in sd):  # training checkpoint: keep the generator
        sd = {k: v for k, v in sd.items() if k.startswith("generator.")}
    if not sd:
        raise ModelError(f"lama weights {path}: no tensors in it")
    return sd


def load_lama(path: str | os.PathLike, device: str = "cpu"):
    """spandrel's model descriptor of the LaMa weights at `path` (eval mode, fp32, on device)."""
    try:
        import spandrel
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    sd = tensors_of(read_state_dict(path), path)
    try:
        desc = spandrel.ModelLoader(device="cpu").load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        raise ModelError(
            f"lama weights {path}: spandrel does not recognise this state dict as any "
            "architecture it knows; the lama backend needs big-lama weights (docs/models.md)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - keys or shapes that do not fit the architecture
        raise ModelError(
            f"lama weights {path}: does not fit spandrel's LaMa ({type(exc).__name__}: "
            f"{str(exc)[:300]})"
        ) from None
    if desc.architecture.id != ARCHITECTURE:
        raise ModelError(
            f"lama weights {path}: a {desc.architecture.name} model ({desc.purpose}), not LaMa"
        )
    desc.model.eval()
    return desc.to(device)


# -- converting ----------------------------------------------------------------------------
def convert(src: str | os.PathLike, dst: str | os.PathLike, *, trust: bool = False) -> Path:
    """Write the LaMa generator of `src` to `dst` as safetensors (fp32).

    Without `trust`, `src` is read as `load_lama` reads it (safetensors, or weights-only
    unpickling). With `trust`, a TorchScript file (IOPaint's big-lama.pt) is read with
    torch.jit.load and a pickle with full unpickling, which can run code: only for files you trust.
    """
    import torch
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if dst.suffix.lower() != ".safetensors":
        raise ConfigError(f"output {dst} must end in .safetensors")
    if not trust:
        sd = tensors_of(read_state_dict(src), src)
    else:
        try:
            obj = torch.jit.load(str(src), map_location="cpu").state_dict()
        except Exception:  # noqa: BLE001 - not TorchScript: a pickle
            obj = torch.load(str(src), map_location="cpu", weights_only=False)
        sd = tensors_of(dict(obj), src)
    sd = {k.replace("generator.model", "model.model"): v.float() if v.is_floating_point() else v
          for k, v in sd.items()}  # fmt: skip
    import spandrel

    desc = spandrel.ModelLoader().load_from_state_dict(dict(sd))  # refuses what is not LaMa
    if desc.architecture.id != ARCHITECTURE:
        raise ModelError(f"{src}: a {desc.architecture.name} model, not LaMa")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in desc.model.state_dict().items()}
    save_file(tensors, str(dst), metadata={"format": "pt"})
    return dst


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m batch_inpaint.models.lama_weights",
        description="Convert LaMa weights (.pth/.ckpt/.pt/.safetensors) to a .safetensors file "
        "the lama backend loads.",
    )
    p.add_argument("src", help="input weights")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--trust", action="store_true",
                   help="read TorchScript (.pt) and full pickles: can run code, only for files you trust")  # fmt: skip
    args = p.parse_args(argv)
    out = convert(args.src, args.dst, trust=args.trust)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
