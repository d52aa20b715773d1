"""Bytes <-> RGB uint8 arrays, hardened against the files a large crawl contains."""

from __future__ import annotations

import io
import re
import warnings
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from batch_inpaint.errors import ConfigError, DecodeError, InpaintError, NotFoundError
from batch_inpaint.vocab import ErrorKind

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
# Pillow calls multi-picture JPEGs from phones "MPO"; they are JPEGs (first picture decoded).
_FORMAT_ALIASES = {"MPO": "JPEG"}
DEFAULT_MAX_PIXELS = 64_000_000
ENCODE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A loaded, EXIF-transposed PIL image, or DecodeError saying why the bytes are unusable.

    The pixel limit is checked on the header, before any pixel is decoded.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConfigError(f"image data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DecodeError("empty input (0 bytes)")
    # Pillow's own bomb check only warns below 2x its global limit; make the warning an error here,
    # locally, instead of changing Image.MAX_IMAGE_PIXELS for the whole process.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(bytes(data)))
        except UnidentifiedImageError:
            raise DecodeError("not an image") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise _bomb_error(str(exc), max_pixels) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _load_error(exc, data) from None

        check_format(im)
        pixels = im.width * im.height
        if pixels > max_pixels:
            raise DecodeError(
                f"image has {pixels} pixels, over the limit of {int(max_pixels)} "
                "(decompression bomb guard)"
            )
        try:
            im.load()
            # Orientation first, so every later size check sees the picture as it is shown.
            im = ImageOps.exif_transpose(im)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise _bomb_error(str(exc), max_pixels) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as exc:
            raise _load_error(exc, data) from None
    return im


def check_format(im: Image.Image) -> None:
    """DecodeError unless the opened image is of an allowed format (also used by validation)."""
    fmt = _FORMAT_ALIASES.get(im.format or "", im.format or "unknown")
    if fmt not in ALLOWED_FORMATS:
        raise DecodeError(f"unsupported format {fmt}; allowed: {', '.join(ALLOWED_FORMATS)}")


def _bomb_error(message: str, max_pixels: int) -> DecodeError:
    found = re.search(r"\((\d+) pixels\)", message)
    limit = re.search(r"limit of (\d+) pixels", message)
    n = found.group(1) if found else "too many"
    # Pillow's process-wide limit can be lower than ours; report whichever stopped the image.
    m = min(int(max_pixels), int(limit.group(1))) if limit else int(max_pixels)
    return DecodeError(f"image has {n} pixels, over the limit of {m} (decompression bomb guard)")


def _load_error(exc: BaseException, data: bytes) -> DecodeError:
    text = str(exc)
    head = bytes(data[:12])
    riff_short = (  # WebP reports a cut file only as "could not create decoder object"
        head[:4] == b"RIFF"
        and head[8:12] == b"WEBP"
        and int.from_bytes(head[4:8], "little") + 8 > len(data)
    )
    if "truncat" in text.lower() or isinstance(exc, EOFError) or riff_short:
        return DecodeError(f"truncated image ({text})" if text else "truncated image")
    return DecodeError(f"corrupt image data ({type(exc).__name__}: {text})")


def to_rgb_alpha(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 HxWx3 and the alpha channel (uint8 HxW) if the image has one, from any mode."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = scale_to_uint8(np.asarray(im), bits=16 if mode.startswith("I;16") else None)
        return np.repeat(gray[:, :, None], 3, axis=2), None
    if mode == "P" and "transparency" in im.info or mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("La", "LA"):
        la = np.asarray(im.convert("LA") if mode == "La" else im)
        return np.repeat(la[:, :, :1], 3, axis=2).copy(), la[:, :, 1].copy()
    elif mode == "RGBa":
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        rgba = np.asarray(im)
        return rgba[:, :, :3].copy(), rgba[:, :, 3].copy()
    try:
        rgb = im if im.mode == "RGB" else im.convert("RGB")
    except ValueError as exc:
        raise DecodeError(f"unsupported colour mode {mode} ({exc})") from None
    return np.array(rgb, dtype=np.uint8), None


def scale_to_uint8(a: np.ndarray, bits: int | None = None) -> np.ndarray:
    """A single-channel array as uint8, scaled (never clipped) from the range its values use.

    `bits=16` (Pillow's I;16 modes) maps 0..65535 to 0..255. Otherwise integers already in 0..255
    stay, integers in 0..65535 are taken as 16-bit, floats in [0, 1] map to 0..255, and anything
    wider or negative is min-max normalised.
    """
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.copy()
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    is_float = np.issubdtype(a.dtype, np.floating)
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if bits == 16:
        out = a / 257.0
    elif is_float and lo >= 0.0 and hi <= 1.0:
        out = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        out = a
    elif not is_float and lo >= 0.0 and hi <= 65535.0:
        out = a / 257.0
    else:
        out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image bytes to RGB uint8 HxWx3 (allowlisted format, EXIF orientation applied)."""
    return to_rgb_alpha(open_image(data, max_pixels))[0]


def decode_image_with_alpha(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 and the alpha channel (uint8 HxW; P/LA transparency included), None if none."""
    return to_rgb_alpha(open_image(data, max_pixels))


def load_array(src: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 from a local path, file:// URI, PIL image, numpy array or image bytes.

    Arrays may be HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped), uint8/uint16/bool or float in
    [0, 1]. PIL images are taken as they are (no EXIF transposition: they are already open).
    Remote URIs go through storage.py, not here.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_image(src, max_pixels)
    if isinstance(src, Image.Image):
        return to_rgb_alpha(src)[0]
    if isinstance(src, np.ndarray):
        return array_to_rgb(src)
    if isinstance(src, (str, Path)):
        path = Path(src) if isinstance(src, Path) else _local_path(src)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"expected an image file, got a directory: {path}") from None
        return decode_image(data, max_pixels)
    raise ConfigError(
        f"cannot load an image from {type(src).__name__}; "
        "pass a path, file:// URI, PIL image, numpy array or bytes"
    )


def _local_path(src: str) -> Path:
    parsed = urlparse(src)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"file URI with a remote host is not supported: {src}")
        return Path(unquote(parsed.path))
    if len(parsed.scheme) > 1:  # one letter: a Windows drive, not a scheme
        raise ConfigError(
            f"load_array reads local files only, got {parsed.scheme}:// ({src}); "
            "fetch remote images with batch_inpaint.storage.store"
        )
    return Path(src)


def array_to_rgb(a: np.ndarray) -> np.ndarray:
    """A numpy image (HxW, HxWx1/3/4; uint8, uint16, bool or float in [0, 1]) as RGB uint8."""
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        channels = a[:, :, :3] if a.shape[2] >= 3 else a[:, :, :1]
    elif a.ndim == 2:
        channels = a[:, :, None]
    else:
        raise ConfigError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ConfigError(f"image array is empty, shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(channels).all() or channels.min() < 0.0 or channels.max() > 1.0:
            raise ConfigError("float image arrays must hold values in [0, 1]")
        out = np.rint(channels.astype(np.float64) * 255.0).astype(np.uint8)
    elif a.dtype == np.uint8:
        out = channels
    elif a.dtype == bool:
        out = channels.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        out = np.rint(channels / 257.0).astype(np.uint8)
    else:
        raise ConfigError(
            f"image array dtype must be uint8, uint16, bool or float in [0, 1], got {a.dtype}"
        )
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.uint8)


def encode_image(
    rgb: np.ndarray,
    fmt: str = "png",
    quality: int = 95,
    png_compress_level: int = 1,
    exif: bytes | Image.Exif | None = None,
) -> bytes:
    """RGB uint8 to png/jpeg/webp bytes with no metadata at all, unless `exif` is given to keep.

    Kept EXIF gets orientation 1: the pixels are already upright, and EXIF can hold GPS, which is
    why nothing is kept by default.
    """
    name = ENCODE_FORMATS.get(str(fmt).lower())
    if name is None:
        raise ConfigError(f"output format must be one of png, jpeg, webp, got {fmt!r}")
    if not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ConfigError(f"quality must be an integer in [1, 100], got {quality!r}")
    if not (isinstance(png_compress_level, int) and 0 <= png_compress_level <= 9):
        raise ConfigError(f"png_compress_level must be in [0, 9], got {png_compress_level!r}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"encode_image needs RGB uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    if name == "PNG" and exif is None:
        return _encode_png(rgb, png_compress_level)
    im = Image.fromarray(np.ascontiguousarray(rgb), "RGB")  # a fresh image: no info, no ICC, no XMP
    kwargs: dict[str, Any] = {}
    if name == "PNG":
        kwargs["compress_level"] = png_compress_level
    elif name == "JPEG":
        # 4:4:4 chroma at high quality: 4:2:0 smears the colour edges of the inpainted area.
        kwargs.update(quality=quality, subsampling=0 if quality >= 90 else 2, optimize=True)
    else:
        kwargs.update(quality=quality, method=4)
    if exif is not None:
        kwargs["exif"] = _upright_exif(exif)
    out = io.BytesIO()
    im.save(out, name, **kwargs)
    return out.getvalue()


def _encode_png(rgb: np.ndarray, level: int) -> bytes:
    """PNG through OpenCV's libpng: IHDR, IDAT and IEND only (no metadata), the same pixels as
    Pillow writes. Level 1 filters every row with Paeth instead of trying each filter per row:
    14-30% faster and at most 2% bigger on photos, scans and text (docs/benchmarks.md, c2;
    zlib's RLE strategy was faster still but up to 3.7x bigger on greyscale and text). Other
    levels keep libpng's adaptive filters: they are asked for small files."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if level == 1 and hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise _encode_error(f"PNG encoding failed for a {rgb.shape[1]}x{rgb.shape[0]} image")
    return buf.tobytes()


def _encode_error(message: str) -> InpaintError:
    return InpaintError(message, kind=ErrorKind.ENCODE.value)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(data: bytes, size: tuple[int, int]) -> None:
    """InpaintError (kind encode) unless `data` is a whole 8-bit RGB PNG of `size` (w, h):
    signature, IHDR, every chunk's CRC, IDAT, and IEND last, so a cut or damaged buffer fails.
    About 0.3 ms at 512², where a full decode costs 6 to 9 ms (docs/benchmarks.md)."""
    view = memoryview(data)
    if bytes(view[:8]) != PNG_SIGNATURE:
        raise _encode_error("encoded output is not a PNG")
    pos, seen, end = 8, [], len(view)
    while pos + 12 <= end:
        length = int.from_bytes(view[pos : pos + 4], "big")
        kind = bytes(view[pos + 4 : pos + 8])
        stop = pos + 8 + length
        if stop + 4 > end:
            raise _encode_error(f"encoded PNG is cut short in its {kind!r} chunk")
        if zlib.crc32(view[pos + 4 : stop]) != int.from_bytes(view[stop : stop + 4], "big"):
            raise _encode_error(f"encoded PNG: bad CRC in its {kind!r} chunk")
        if not seen and kind == b"IHDR":
            w, h = (int.from_bytes(view[pos + 8 + k : pos + 12 + k], "big") for k in (0, 4))
            if (w, h) != tuple(size) or bytes(view[pos + 16 : pos + 18]) != b"\x08\x02":
                raise _encode_error(
                    f"encoded PNG is {w}x{h} (or not 8-bit RGB), expected {size[0]}x{size[1]}"
                )
        seen.append(kind)
        pos = stop + 4
    if not seen or seen[0] != b"IHDR" or b"IDAT" not in seen or seen[-1] != b"IEND" or pos != end:
        raise _encode_error(
            f"encoded PNG is incomplete (chunks {[k.decode('latin-1') for k in seen]})"
        )


def _upright_exif(exif: bytes | Image.Exif) -> bytes:
    if isinstance(exif, Image.Exif):
        ex = exif
    else:
        ex = Image.Exif()
        try:
            ex.load(bytes(exif))
        except Exception as e:  # noqa: BLE001 - any parse failure means unusable EXIF
            raise ConfigError(f"exif must be EXIF bytes as Pillow reads them: {e}") from None
    if ex.get(0x0112, 1) != 1:
        ex[0x0112] = 1
    return ex.tobytes()
