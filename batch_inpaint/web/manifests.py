"""Manifests the page writes: "Add to manifest" appends the picture, its mask and the settings
as a row that a job reads with `Manifest.read`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError, InpaintError, ManifestError, MaskError
from batch_inpaint.image import codec
from batch_inpaint.web.inputs import NAME, Picture, mask_png

_manifest_lock = threading.Lock()  # one writer per manifest file in this process


def manifest_dir(root: str | os.PathLike, name: str) -> Path:
    """The folder of manifest `name` under `root`; ConfigError for a name that isn't a plain name.

    Names are letters, digits, '.', '_' and '-' (spaces become '-'), at most 64, not starting with
    a dot: no separators, no '..', so a name can't reach outside the root.
    """
    cleaned = re.sub(r"\s+", "-", str(name or "").strip())
    cleaned = cleaned.removesuffix(".parquet")
    if not NAME.fullmatch(cleaned) or ".." in cleaned:
        raise ConfigError(
            f"manifest name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    root_path = Path(root).resolve()
    folder = (root_path / cleaned).resolve()
    if folder.parent != root_path:  # defence in depth; the pattern already rules this out
        raise ConfigError(f"manifest name {name!r} leaves the manifest folder")
    return folder


def add_to_manifest(
    root: str | os.PathLike,
    name: str,
    picture: Picture,
    mask: np.ndarray,
    params: dict[str, Any],
) -> tuple[Path, dict[str, Any], bool]:
    """Append a row (image, drawn mask, parameters) to manifest `name`; returns (path, row,
    added): `added` is False when the manifest already holds that row (it is left as it is).

    Layout: <root>/<name>/manifest.parquet, masks/<id>.png and, for uploads, images/<digest>.png
    (an upload has no URI of its own). URIs in the row are relative to the manifest's folder, so the
    folder can be copied to object storage as it is; a bundled sample keeps its own absolute path.
    A row's id is a digest of its image, mask and parameters, so the same row has the same id.
    """
    from batch_inpaint.manifest.manifest import Manifest

    if not mask.any():
        raise MaskError("the mask is empty: paint over what should go before adding it")
    folder = manifest_dir(root, name)
    path = folder / "manifest.parquet"
    row_params = dict(params.get("manifest_row", params))
    digest = picture.digest
    mask_bytes = mask_png(mask)
    key = hashlib.sha256(
        digest.encode() + mask_bytes + json.dumps(row_params, sort_keys=True).encode()
    )
    row_id = f"{picture.name}-{key.hexdigest()[:12]}"
    # a bundled sample keeps its own URI; an upload is saved beside the manifest
    image_uri = picture.source_uri or f"images/{digest[:16]}.png"
    row = {"id": row_id, "image": image_uri, "mask": f"masks/{row_id}.png", **row_params}
    with _manifest_lock:
        rows = _read_rows(path)
        if any(r.get("id") == row_id for r in rows):
            return path, row, False
        folder.mkdir(parents=True, exist_ok=True)
        if picture.source_uri is None and not (folder / image_uri).exists():
            _write_atomic(folder / image_uri, codec.encode_image(picture.rgb, "png"))
        _write_atomic(folder / row["mask"], mask_bytes)
        Manifest.from_records([*rows, row]).write(str(path))
    return path, row, True


def _read_rows(path: Path) -> list[dict[str, Any]]:
    from batch_inpaint.manifest.manifest import Manifest

    if not path.exists():
        return []
    try:
        return list(Manifest.read(str(path)))
    except InpaintError as exc:
        raise ManifestError(
            f"can't add to {path}: {exc}; pick another manifest name, or move that file away"
        ) from None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
