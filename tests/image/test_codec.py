import io
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from batch_inpaint.errors import ConfigError, DecodeError, InpaintError, NotFoundError
from batch_inpaint.image.codec import (
    check_png,
    decode_image,
    decode_image_with_alpha,
    encode_image,
    load_array,
    open_image,
)


def save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def noise(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a huge size while holding a 1x1 image: a cheap bomb."""
    data = bytearray(save(Image.new("L", (1, 1)), "PNG"))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[12:29] = ihdr
    data[29:33] = zlib.crc32(bytes(ihdr)).to_bytes(4, "big")
    return bytes(data)


# --- bad input ------------------------------------------------------------------------------


def test_empty_input():
    with pytest.raises(DecodeError, match=r"empty input \(0 bytes\)"):
        decode_image(b"")


def test_random_bytes_are_not_an_image():
    data = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(DecodeError, match="not an image") as info:
        decode_image(data)
    assert info.value.kind == "decode"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP"])
def test_truncated_file(fmt):
    data = save(Image.fromarray(noise()), fmt)
    with pytest.raises(DecodeError, match="truncated image"):
        decode_image(data[: len(data) // 2])


def test_gif_is_not_allowed():
    data = save(Image.fromarray(noise()), "GIF")
    with pytest.raises(DecodeError, match="unsupported format GIF; allowed: PNG, JPEG, WEBP"):
        decode_image(data)


def test_pixel_limit_is_configurable():
    data = save(Image.fromarray(noise(48, 64)), "PNG")
    with pytest.raises(DecodeError, match="image has 3072 pixels, over the limit of 3000"):
        decode_image(data, max_pixels=3000)
    assert decode_image(data, max_pixels=3072).shape == (48, 64, 3)


def test_bomb_is_caught_from_the_header_alone():
    # 30000 x 30000 claimed; decoding it would need 900 MB. The header check stops it first.
    data = png_header_claiming(30000, 30000)
    with pytest.raises(DecodeError, match="900000000 pixels, over the limit of 64000000"):
        decode_image(data)


def test_pillow_bomb_warning_is_an_error_and_global_state_is_untouched():
    before_limit, before_filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    data = png_header_claiming(10000, 10000)  # over Pillow's limit (89M), under ours here
    with pytest.raises(DecodeError, match="decompression bomb guard"):
        decode_image(data, max_pixels=200_000_000)
    assert before_limit == Image.MAX_IMAGE_PIXELS
    assert list(warnings.filters) == before_filters


# --- orientation and colour modes -----------------------------------------------------------


def test_exif_orientation_is_applied():
    # 40 wide x 20 tall, left half red, right half blue; orientation 6 = rotate 90 deg clockwise.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = save(Image.fromarray(a), "JPEG", exif=exif.tobytes(), quality=95)
    rgb = decode_image(data)
    assert rgb.shape == (40, 20, 3)  # now 20 wide, 40 tall
    top, bottom = rgb[5, 10].astype(int), rgb[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) side went to the top
    assert bottom[2] > 200 and bottom[0] < 60
    # the size check sees the upright size too
    assert open_image(data).size == (20, 40)


def _mode_cases():
    g = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    cases = {
        "L": Image.fromarray(g, "L"),
        "RGBA": Image.fromarray(np.dstack([noise(12, 16), g]), "RGBA"),
        "LA": Image.fromarray(np.dstack([g, g]), "LA"),
        "P": Image.fromarray(noise(12, 16)).convert("P"),
        "CMYK": Image.fromarray(noise(12, 16)).convert("CMYK"),
        "1": Image.fromarray(g > 100).convert("1"),
    }
    return cases


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "1"])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_every_mode_becomes_rgb_uint8(mode, fmt):
    im = _mode_cases()[mode]
    if fmt == "PNG" and mode == "CMYK":
        fmt = "JPEG"
    rgb = decode_image(save(im, fmt))
    assert rgb.dtype == np.uint8 and rgb.shape == (12, 16, 3)
    if mode == "L":
        assert np.array_equal(rgb[:, :, 1], np.asarray(im))
    if mode == "1":
        assert set(np.unique(rgb)) == {0, 255}


@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF")])
def test_16_bit_is_scaled_not_clipped(mode, fmt):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    im = Image.frombytes(mode, (4, 1), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    rgb = decode_image(save(im, fmt))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_32_bit_integer_and_float_modes():
    i_im = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), "I")
    assert decode_image(save(i_im, "TIFF"))[0, :, 0].tolist() == [0, 4, 255]
    f_im = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert decode_image(save(f_im, "TIFF"))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-5.0, 0.0, 5.0]], dtype=np.float32), "F")
    assert decode_image(save(wide, "TIFF"))[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_is_returned_when_present():
    g = np.full((6, 8), 200, np.uint8)
    alpha = np.zeros((6, 8), np.uint8)
    alpha[:, 4:] = 255
    rgb, a = decode_image_with_alpha(save(Image.fromarray(np.dstack([g, alpha]), "LA"), "PNG"))
    assert np.array_equal(a, alpha) and (rgb == 200).all()
    p = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 0
    rgb, a = decode_image_with_alpha(save(p, "PNG", transparency=0))
    assert a.tolist() == [[0, 255], [255, 0]]
    assert rgb[0, 1].tolist() == [0, 255, 0]
    assert decode_image_with_alpha(save(Image.fromarray(noise()), "PNG"))[1] is None


# --- load_array -----------------------------------------------------------------------------


def test_load_array_sources(tmp_path):
    a = noise(10, 12)
    path = tmp_path / "a b.png"
    path.write_bytes(save(Image.fromarray(a), "PNG"))
    assert np.array_equal(load_array(str(path)), a)
    assert np.array_equal(load_array(path), a)
    assert np.array_equal(load_array("file://" + str(path).replace(" ", "%20")), a)
    assert np.array_equal(load_array(path.read_bytes()), a)
    assert np.array_equal(load_array(Image.fromarray(a)), a)
    assert np.array_equal(load_array(a), a)
    rgba = np.dstack([a, np.zeros((10, 12), np.uint8)])
    assert np.array_equal(load_array(rgba), a)
    gray = load_array(a[:, :, 0])
    assert gray.shape == (10, 12, 3) and np.array_equal(gray[:, :, 2], a[:, :, 0])
    assert np.array_equal(load_array(a / 255.0), a)


def test_load_array_rejects_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match=r"values in \[0, 1\]"):
        load_array(np.full((4, 4, 3), 2.0))
    with pytest.raises(ConfigError, match="shape"):
        load_array(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ConfigError, match="dtype"):
        load_array(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(ConfigError, match="local files only"):
        load_array("s3://bucket/a.png")
    with pytest.raises(NotFoundError, match="no such file"):
        load_array(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="cannot load an image from int"):
        load_array(3)


# --- encode ---------------------------------------------------------------------------------


def test_encode_round_trips():
    a = noise(33, 51)
    assert np.array_equal(decode_image(encode_image(a, "png")), a)
    xx, yy = np.meshgrid(np.arange(51) * 5, np.arange(33) * 7)
    smooth = np.dstack([xx, yy, np.full((33, 51), 99)])
    smooth = smooth.astype(np.uint8)
    for fmt in ("jpeg", "webp"):
        back = decode_image(encode_image(smooth, fmt, quality=95))
        assert back.shape == smooth.shape
        assert np.abs(back.astype(int) - smooth).mean() < 4
    assert encode_image(a, "png", png_compress_level=9) != encode_image(
        a, "png", png_compress_level=0
    )


def _jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x0112] = 6
    gps = exif.get_ifd(0x8825)
    gps[2] = (51.0, 30.0, 0.0)  # GPSLatitude
    return save(Image.fromarray(noise(8, 8)), "JPEG", exif=exif.tobytes())


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_strips_metadata_by_default(fmt):
    source = _jpeg_with_gps()
    assert Image.open(io.BytesIO(source)).getexif().get_ifd(0x8825)  # the source has GPS
    out = encode_image(decode_image(source), fmt)
    reopened = Image.open(io.BytesIO(out))
    assert "exif" not in reopened.info and len(reopened.getexif()) == 0
    assert b"CameraMaker" not in out


def test_encode_keeps_exif_when_asked_with_upright_orientation():
    source = _jpeg_with_gps()
    exif = Image.open(io.BytesIO(source)).info["exif"]
    out = encode_image(decode_image(source), "jpeg", exif=exif)
    kept = Image.open(io.BytesIO(out)).getexif()
    assert kept[0x010F] == "CameraMaker"
    assert kept[0x0112] == 1  # pixels are already rotated; viewers must not rotate again
    assert decode_image(out).shape == (8, 8, 3)


def test_encode_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="output format"):
        encode_image(noise(), "gif")
    with pytest.raises(ConfigError, match="quality"):
        encode_image(noise(), "jpeg", quality=0)
    with pytest.raises(ConfigError, match="RGB uint8"):
        encode_image(noise().astype(np.float32), "png")


# --- PNG through OpenCV and its check -------------------------------------------------------


def _chunks(data: bytes) -> list[bytes]:
    pos, out = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos + 4 : pos + 8])
        pos += 12 + n
    return out


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_is_lossless_rgb_with_no_metadata_at_every_level(level):
    a = noise(37, 53, seed=level)
    out = encode_image(a, "png", png_compress_level=level)
    assert np.array_equal(decode_image(out), a)  # RGB order kept through OpenCV's BGR
    with Image.open(io.BytesIO(out)) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (53, 37))
    kinds = set(_chunks(out))
    assert kinds <= {b"IHDR", b"IDAT", b"IEND"}, kinds
    check_png(out, (53, 37))


def test_png_with_kept_exif_still_carries_it():
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    out = encode_image(noise(8, 8), "png", exif=exif.tobytes())
    with Image.open(io.BytesIO(out)) as im:
        assert im.getexif()[0x010F] == "CameraMaker"
    assert np.array_equal(decode_image(out), noise(8, 8))


def test_check_png_refuses_cut_damaged_and_wrong_outputs():
    out = encode_image(noise(40, 60), "png")
    check_png(out, (60, 40))
    kinds = {"encode"}
    damaged = bytearray(out)
    damaged[len(out) // 2] ^= 0x55  # inside an IDAT: its CRC no longer matches
    bad = {
        "cut short": out[: len(out) - 30],
        "incomplete": out[: len(out) - 12],  # IEND dropped
        "bad CRC": bytes(damaged),
        "not a PNG": encode_image(noise(40, 60), "jpeg"),
    }
    for words, data in bad.items():
        with pytest.raises(InpaintError, match=words) as info:
            check_png(data, (60, 40))
        kinds.add(info.value.kind)
    with pytest.raises(InpaintError, match="is 60x40 .*expected 40x60"):
        check_png(out, (40, 60))
    assert kinds == {"encode"}
