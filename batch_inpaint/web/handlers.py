"""What the web page does, as plain functions: no gradio here, so each is testable on its own.

Every function takes decoded values (arrays, strings, numbers) and returns values or raises an
InpaintError whose message can be shown to the person at the page as it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError, DecodeError, InpaintError, ManifestError, MaskError
from batch_inpaint.image import codec, masks
from batch_inpaint.params import GenerationParams, GeometryOptions, InpaintOptions, MaskOptions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
ACCEPTED_TYPES = "PNG, JPEG, WebP, TIFF or BMP"
DEFAULT_MAX_UPLOAD_MB = 20.0
# A phone or DSLR photo (6000x4000) fits; more than that is slow to paint on in a browser.
DEFAULT_MAX_PIXELS = 25_000_000
# Painted pixels: alpha above this fraction of opaque (the brush paints at 0.6).
STROKE_THRESHOLD = 0.25
SEED_LIMIT = 2**31  # seeds the page draws itself; GenerationParams takes up to 2**63
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass(frozen=True)
class ServeSettings:
    """What `batch-inpaint serve` was started with that the page itself uses."""

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    manifest_root: Path = Path("manifests")
    samples_dir: Path | None = None  # None: the repository's examples/images when present

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if not int(self.max_pixels) >= 64 * 64:
            raise ConfigError(f"max_pixels must be at least 4096, got {self.max_pixels}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def limits_text(self) -> str:
        return (
            f"{ACCEPTED_TYPES}, up to {self.max_upload_mb:g} MB and "
            f"{self.max_pixels / 1e6:g} megapixels"
        )


@dataclass(frozen=True)
class Picture:
    """The image being worked on, decoded once on the server (the page only shows a copy)."""

    rgb: np.ndarray
    name: str  # a file-name stem, safe in paths
    source_uri: str | None = None  # a bundled sample's absolute path; None for uploads

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    @property
    def digest(self) -> str:
        h = hashlib.sha256(f"{self.rgb.shape}".encode())
        h.update(np.ascontiguousarray(self.rgb).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path | None = None


@dataclass(frozen=True)
class RunResult:
    image: np.ndarray  # RGB uint8, the input's size
    png: bytes
    seed: int
    status: str  # ok | skipped (an empty mask after finishing)
    params: dict[str, Any]  # what reproduces this result (see reproduction_params)


# -- images -----------------------------------------------------------------------------------
def safe_stem(name: str | None, default: str = "image") -> str:
    """A file-name stem made of letters, digits, '.', '_' and '-' (from an upload's name)."""
    stem = Path(str(name or "")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:48]
    return stem or default


def load_upload(
    path: str | os.PathLike, settings: ServeSettings, name: str | None = None
) -> Picture:
    """Decode an upload (the file gradio saved) with the hardened decoder; DecodeError says why not.

    The size is checked before reading, the pixel count on the header before decoding.
    """
    path = Path(path)
    shown = name or path.name
    size = path.stat().st_size
    if size > settings.max_upload_bytes:
        raise DecodeError(
            f"{shown} is {size / 2**20:.1f} MB; this page accepts {settings.limits_text()}"
        )
    try:
        rgb = codec.decode_image(path.read_bytes(), max_pixels=settings.max_pixels)
    except DecodeError as exc:
        raise DecodeError(
            f"{shown} can't be used: {exc}. This page accepts {settings.limits_text()}"
        ) from None
    return Picture(rgb=rgb, name=safe_stem(shown))


def find_samples(folder: str | os.PathLike | None = None) -> dict[str, Sample]:
    """The bundled sample images by name (file stem), with their traced mask where one exists."""
    images = Path(folder) if folder is not None else REPO_EXAMPLES / "images"
    if not images.is_dir():
        return {}
    mask_dir = images.parent / "masks"
    out: dict[str, Sample] = {}
    for p in sorted(images.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _NAME.fullmatch(p.stem):
            m = mask_dir / f"{p.stem}.png"
            out[p.stem] = Sample(p.stem, p.resolve(), m.resolve() if m.is_file() else None)
    return out


def load_sample(name: str, samples: dict[str, Sample], settings: ServeSettings) -> Picture:
    """A bundled sample by name: the page sends a name, never a path."""
    sample = samples.get(str(name))
    if sample is None:
        raise ConfigError(f"no sample called {name!r}; samples: {', '.join(samples) or 'none'}")
    rgb = codec.decode_image(sample.image.read_bytes(), max_pixels=max(settings.max_pixels, 1))
    return Picture(rgb=rgb, name=sample.name, source_uri=str(sample.image))


def thumbnail(rgb: np.ndarray, side: int = 160) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((side, side))
    return np.asarray(im)


def preview_size(width: int, height: int, max_side: int, max_bytes: int) -> tuple[int, int]:
    """The size to show an image at in the editor: at most `max_side` per side, and small enough
    that the browser's RGBA PNG of it (up to ~4 bytes a pixel: noise does not compress) fits in
    an upload of `max_bytes`. The editor sends the canvas back as such PNGs, and an upload over
    gradio's max_file_size is refused with no message on the page."""
    budget = 0.9 * max_bytes / 4.1
    scale = min(1.0, max_side / max(width, height), (budget / (width * height)) ** 0.5)
    if scale >= 1.0:
        return width, height
    return max(1, int(width * scale)), max(1, int(height * scale))


def preview(rgb: np.ndarray, max_side: int, max_bytes: int) -> np.ndarray:
    """`rgb` scaled down to preview_size (itself when it already fits)."""
    from PIL import Image

    height, width = rgb.shape[:2]
    size = preview_size(width, height, max_side, max_bytes)
    if size == (width, height):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


# -- masks ------------------------------------------------------------------------------------
def mask_from_layers(layers: list[np.ndarray] | None, size: tuple[int, int]) -> np.ndarray:
    """The painted pixels of the editor's layers (any colour, alpha above STROKE_THRESHOLD).

    The layers come at the canvas size, which is the image's; another size is resized (nearest).
    """
    w, h = size
    painted = np.zeros((h, w), bool)
    for layer in layers or []:
        a = np.asarray(layer)
        if a.ndim != 3 or a.shape[2] != 4:
            continue  # a layer without alpha is not a painted layer
        options = MaskOptions(threshold=STROKE_THRESHOLD, resize=True)
        painted |= masks.mask_from_image(np.ascontiguousarray(a[:, :, 3]), size, options)
    return painted


def load_mask_upload(
    path: str | os.PathLike, picture: Picture, settings: ServeSettings
) -> np.ndarray:
    """An uploaded mask image (white = inpaint), resized to the picture if its size differs."""
    path = Path(path)
    if path.stat().st_size > settings.max_upload_bytes:
        raise DecodeError(f"the mask file is over {settings.max_upload_mb:g} MB")
    try:
        return masks.mask_from_image(
            path.read_bytes(),
            picture.size,
            MaskOptions(resize=True),
            max_pixels=settings.max_pixels,
        )
    except DecodeError as exc:
        raise DecodeError(f"the mask can't be used: {exc}") from None


def tint(rgb: np.ndarray, mask: np.ndarray | None, colour=(255, 0, 255), alpha=0.5) -> np.ndarray:
    """The picture with `mask` shown in colour (how an uploaded mask appears in the editor)."""
    if mask is None or not mask.any():
        return rgb
    out = rgb.copy()
    c = np.asarray(colour, np.float32)
    out[mask] = np.rint(rgb[mask] * (1 - alpha) + c * alpha).astype(np.uint8)
    return out


def mask_png(mask: np.ndarray) -> bytes:
    """A 0/255 greyscale PNG of a bool mask: what manifest rows and `mask_from_image` expect."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


# -- parameters -------------------------------------------------------------------------------
def make_options(
    prompt: str,
    negative_prompt: str | None,
    steps: float,
    guidance_scale: float,
    seed: float | None,
    random_seed: bool,
    mode: str,
    dilate: float,
    feather: float,
) -> tuple[InpaintOptions, int]:
    """The page's fields as InpaintOptions and the seed to use; ConfigError names a bad field."""
    if random_seed or seed is None or seed == "":
        used = secrets.randbelow(SEED_LIMIT)
    else:
        used = _int(seed, "seed")
        if used < 0:
            raise ConfigError(f"seed must be >= 0, got {used} (or tick 'random seed')")
    generation = GenerationParams(
        prompt=str(prompt or "").strip(),
        negative_prompt=(str(negative_prompt).strip() or None) if negative_prompt else None,
        num_inference_steps=_int(steps, "steps"),
        guidance_scale=float(guidance_scale),
        seed=used,
    )
    options = InpaintOptions(
        generation=generation,
        mask=MaskOptions(dilate=_int(dilate, "mask dilation"), feather=_int(feather, "feather")),
        geometry=GeometryOptions(mode=mode),
    )
    return options, used


def _int(v: Any, what: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, got {v!r}") from None
    if f != int(f):
        raise ConfigError(f"{what} must be a whole number, got {v!r}")
    return int(f)


def reproduction_params(options: InpaintOptions, seed: int, model: dict[str, Any]) -> dict:
    """What reproduces a result in a job: a manifest row and the job config's fields.

    The seed belongs in the row: a job's own `seed` is a base from which each row's seed is derived.
    `job_config` uses JobConfig's YAML keys, `manifest_row` the manifest schema's override columns.
    """
    g, m, geo = options.generation, options.mask, options.geometry
    backend = model.get("backend") or "diffusers"
    job = {
        "backend": backend,
        # the tiny checkpoint is rebuilt from code; its id is not something to load
        "model": model.get("model") if backend == "diffusers" else None,
        "revision": model.get("revision") if backend == "diffusers" else None,
        "mode": geo.mode,
        "dilate": m.dilate,
        "feather": m.feather,
        "prompt": g.prompt,
        "negative_prompt": g.negative_prompt,
        "steps": g.num_inference_steps,
        "guidance_scale": g.guidance_scale,
    }
    row = {
        "prompt": g.prompt,
        "negative_prompt": g.negative_prompt,
        "seed": seed,
        "num_inference_steps": g.num_inference_steps,
        "guidance_scale": g.guidance_scale,
    }
    return {"job_config": {k: v for k, v in job.items() if v is not None}, "manifest_row": row}


def job_yaml(params: dict) -> str:
    """The job settings as YAML to paste into a job config file."""
    import yaml

    return yaml.safe_dump(params["job_config"], sort_keys=False, allow_unicode=True)


def row_json(params: dict, row: dict[str, Any] | None = None) -> str:
    """The manifest row as JSON (with id/image/mask once it has been added to a manifest)."""
    return json.dumps(row if row is not None else params["manifest_row"], indent=2)


# -- running ----------------------------------------------------------------------------------
def run_inpaint(
    picture: Picture,
    mask: np.ndarray,
    inpainter: Any,
    options: InpaintOptions,
    seed: int,
) -> RunResult:
    """Inpaint the picture where `mask` is set, through the same path a job row takes."""
    from batch_inpaint.image.inpaint import inpaint_array

    if mask.shape != picture.rgb.shape[:2]:
        raise MaskError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {picture.size}")
    if not mask.any():
        raise MaskError(
            "nothing to inpaint: paint over what should go (or upload a mask), then run"
        )
    result = inpaint_array(picture.rgb, mask, inpainter, options, seed=seed)
    image = np.asarray(result.image)
    params = reproduction_params(options, seed, inpainter.describe())
    return RunResult(image, codec.encode_image(image, "png"), seed, result.status, params)


# -- manifests --------------------------------------------------------------------------------
_manifest_lock = threading.Lock()  # one writer per manifest file in this process


def manifest_dir(root: str | os.PathLike, name: str) -> Path:
    """The folder of manifest `name` under `root`; ConfigError for a name that isn't a plain name.

    Names are letters, digits, '.', '_' and '-' (spaces become '-'), at most 64, not starting with
    a dot: no separators, no '..', so a name can't reach outside the root.
    """
    cleaned = re.sub(r"\s+", "-", str(name or "").strip())
    cleaned = cleaned.removesuffix(".parquet")
    if not _NAME.fullmatch(cleaned) or ".." in cleaned:
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
) -> tuple[Path, dict[str, Any]]:
    """Append a row (image, drawn mask, parameters) to manifest `name`; returns (path, row).

    Layout: <root>/<name>/manifest.parquet, masks/<id>.png and, for uploads, images/<digest>.png
    (an upload has no URI of its own). URIs in the row are relative to the manifest's folder, so the
    folder can be copied to object storage as it is; a bundled sample keeps its own absolute path.
    A row with the same id (same image, mask and parameters) replaces the old one.
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
    with _manifest_lock:
        folder.mkdir(parents=True, exist_ok=True)
        if picture.source_uri is not None:
            image_uri = picture.source_uri
        else:
            image_uri = f"images/{digest[:16]}.png"
            image_path = folder / image_uri
            if not image_path.exists():
                _write_atomic(image_path, codec.encode_image(picture.rgb, "png"))
        mask_uri = f"masks/{row_id}.png"
        _write_atomic(folder / mask_uri, mask_bytes)
        row = {"id": row_id, "image": image_uri, "mask": mask_uri, **row_params}
        rows = []
        if path.exists():
            try:
                rows = [r for r in Manifest.read(str(path)) if r.get("id") != row_id]
            except InpaintError as exc:
                raise ManifestError(f"can't add to {path}: {exc}") from None
        Manifest.from_records([*rows, row]).write(str(path))
    return path, row


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class PageState:
    """Per-browser-session state kept on the server (gr.State)."""

    picture: Picture | None = None
    uploaded_mask: np.ndarray | None = None
    last_seed: int | None = None
