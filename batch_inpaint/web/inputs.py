"""What comes into the page, as plain values: the server's settings, the picture being worked on,
uploads, bundled samples, the editor's preview and the masks painted or uploaded on it.

Every file is checked before it is decoded: its size on disk, then its pixel count on the header
(`codec.open_image`), so a small file that would decode to gigabytes is refused first.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError, DecodeError
from batch_inpaint.image import codec, masks
from batch_inpaint.image.mask_png import encode_mask as mask_png  # noqa: F401 - manifests.py's
from batch_inpaint.params import MaskOptions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
ACCEPTED_TYPES = "PNG, JPEG, WebP, TIFF or BMP"
DEFAULT_MAX_UPLOAD_MB = 20.0
# A phone or DSLR photo (6000x4000) fits; more than that is slow to paint on in a browser.
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_IDLE_MINUTES = 30.0
DEFAULT_MAX_SESSIONS = 16  # sessions holding a picture; each holds up to ~4 bytes a pixel
# The editor shows (and the browser paints on) at most this many pixels per side; the mask is
# scaled back to the full image. Keeps a 25-megapixel photo responsive in a browser tab.
EDITOR_MAX_SIDE = 2048
# A painted layer is at the preview's size, so never more pixels than this.
LAYER_MAX_PIXELS = EDITOR_MAX_SIDE * EDITOR_MAX_SIDE
# Painted pixels: alpha above this fraction of opaque (the brush paints at 0.6).
STROKE_THRESHOLD = 0.25
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # sample and manifest names
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass(frozen=True)
class ServeSettings:
    """What `batch-inpaint serve` was started with that the page itself uses."""

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    manifest_root: Path = Path("manifests")
    samples_dir: Path | None = None  # None: the repository's examples/images when present
    idle_minutes: float = DEFAULT_IDLE_MINUTES  # a session unused this long lets go of its images
    max_sessions: int = DEFAULT_MAX_SESSIONS  # sessions holding images; the least recent goes first

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if not int(self.max_pixels) >= 64 * 64:
            raise ConfigError(f"max_pixels must be at least 4096, got {self.max_pixels}")
        if not self.idle_minutes > 0:
            raise ConfigError(f"idle_minutes must be > 0, got {self.idle_minutes}")
        if not int(self.max_sessions) >= 1:
            raise ConfigError(f"max_sessions must be at least 1, got {self.max_sessions}")

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


# -- images -----------------------------------------------------------------------------------
def safe_stem(name: str | None, default: str = "image") -> str:
    """A file-name stem made of letters, digits, '.', '_' and '-' (from an upload's name)."""
    stem = Path(str(name or "")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:48]
    return stem or default


def read_checked(path: str | os.PathLike, max_bytes: int, what: str, hint: str = "") -> bytes:
    """The bytes of a file the server was handed, or DecodeError if it is over `max_bytes`
    (checked on its size, before reading it)."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise DecodeError(f"{what} is {size / 2**20:.1f} MB{hint}")
    return Path(path).read_bytes()


def load_upload(
    path: str | os.PathLike, settings: ServeSettings, name: str | None = None
) -> Picture:
    """Decode an upload (the file gradio saved) with the hardened decoder; DecodeError says why not.

    The size is checked before reading, the pixel count on the header before decoding.
    """
    shown = name or Path(path).name
    accepts = f"; this page accepts {settings.limits_text()}"
    data = read_checked(path, settings.max_upload_bytes, shown, accepts)
    try:
        rgb = codec.decode_image(data, max_pixels=settings.max_pixels)
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
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and NAME.fullmatch(p.stem):
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
def layer_alpha(layer: Any, settings: ServeSettings) -> np.ndarray | None:
    """The alpha channel of one painted layer (a PNG file the editor sent, or an array), or None
    for a layer without alpha. A file is checked on its size and header before it is decoded."""
    if isinstance(layer, (str, os.PathLike)):
        data = read_checked(layer, settings.max_upload_bytes, "a painted layer")
        try:
            im = codec.open_image(data, max_pixels=min(LAYER_MAX_PIXELS, settings.max_pixels))
        except DecodeError as exc:
            raise DecodeError(
                f"the painted mask can't be used: {exc}; reload the page and paint again"
            ) from None
        return codec.to_rgb_alpha(im)[1]
    a = np.asarray(layer)
    return np.ascontiguousarray(a[:, :, 3]) if a.ndim == 3 and a.shape[2] == 4 else None


def mask_from_layers(
    layers: list[Any] | None, size: tuple[int, int], settings: ServeSettings | None = None
) -> np.ndarray:
    """The painted pixels of the editor's layers (any colour, alpha above STROKE_THRESHOLD).

    The layers come at the size the editor shows (the preview); the mask is resized (nearest) to
    `size`, the picture's.
    """
    settings = settings or ServeSettings()
    w, h = size
    painted = np.zeros((h, w), bool)
    options = MaskOptions(threshold=STROKE_THRESHOLD, resize=True)
    for layer in layers or []:
        alpha = layer_alpha(layer, settings)
        if alpha is not None:  # a layer without alpha is not a painted layer
            painted |= masks.mask_from_image(alpha, size, options)
    return painted


def load_mask_upload(
    path: str | os.PathLike, picture: Picture, settings: ServeSettings, concerns=None
) -> np.ndarray:
    """An uploaded mask image (white = inpaint), resized to the picture if its size differs.
    `concerns` (a list): masks.mask_concerns's notes are appended (MaskConcern.SIZE: resized)."""
    over = f" (over {settings.max_upload_mb:g} MB)"
    data = read_checked(path, settings.max_upload_bytes, "the mask file", over)
    try:
        return masks.mask_from_image(data, picture.size, MaskOptions(resize=True),
                                     max_pixels=settings.max_pixels, concerns=concerns)  # fmt: skip
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
