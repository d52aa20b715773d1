"""The web page's memory: an over-limit file is refused on its header before anything decodes it
(the process's resident memory is measured around the call), and idle sessions let go of their
images, in the store and on a served page."""

from __future__ import annotations

import contextlib
import gc
import os
import struct
import threading
import time
import weakref
import zlib
from pathlib import Path

import numpy as np
import pytest

from batch_inpaint.errors import ConfigError, DecodeError
from batch_inpaint.web import handlers as h
from batch_inpaint.web import inputs
from tests.test_web import png_bytes

LIMITS = inputs.ServeSettings(max_upload_mb=1, max_pixels=1_000_000)
PICTURE = inputs.Picture(rgb=np.zeros((64, 96, 3), np.uint8), name="small")


def huge_png(path: Path, side: int = 13_000) -> Path:
    """A 1-bit greyscale PNG of side x side pixels: tens of KB on disk, 169 megapixels decoded.
    Written row by row, so making it takes no memory either."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_rss_growth():
    """Samples this process's resident memory while the block runs; yields a dict whose "bytes"
    is the peak growth over the start, once the block is done."""
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc to measure resident memory")
    gc.collect()
    out = {"bytes": 0}
    base = peak = _rss()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        peak = max(peak, _rss())
        done.set()
        sampler.join()
        out["bytes"] = max(peak, _rss()) - base


RSS_BOUND = 64 * 2**20  # the 169-megapixel image decoded would take at least 169 MB


@pytest.mark.parametrize("where", ["image upload", "mask upload", "painted layer"])
def test_an_over_limit_png_is_refused_before_it_is_decoded(tmp_path, where):
    settings, picture = LIMITS, PICTURE
    huge = huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 100_000
    state = h.PageState(picture=picture)
    calls = {
        "image upload": lambda: h.upload_image(str(huge), settings),
        "mask upload": lambda: h.upload_mask(str(huge), state, settings),
        "painted layer": lambda: h.painted_mask(
            state, {"background": "shown.png", "layers": [str(huge)]}, settings
        ),
    }
    with peak_rss_growth() as grown, pytest.raises(DecodeError) as err:
        calls[where]()
    assert "169000000 pixels, over the limit" in str(err.value)
    assert grown["bytes"] < RSS_BOUND, f"grew {grown['bytes'] / 2**20:.0f} MB"


def test_the_editor_hands_over_its_layers_as_files_undecoded(tmp_path):
    settings, picture = LIMITS, PICTURE
    pytest.importorskip("gradio")
    from gradio.components.image_editor import EditorData, EditorDataBlobs

    from batch_inpaint.web.layout import HeaderFirstEditor

    editor = HeaderFirstEditor(type="filepath", image_mode="RGBA", format="png")
    huge = huge_png(tmp_path / "huge.png").read_bytes()
    shown = png_bytes(np.zeros((64, 96, 3), np.uint8))
    # what the browser sends: the canvas's PNGs as blobs, then the event with their id
    editor.blob_storage["s1"] = EditorDataBlobs(background=shown, layers=[huge], composite=shown)
    with peak_rss_growth() as grown:
        value = editor.preprocess(EditorData(id="s1"))
    assert grown["bytes"] < RSS_BOUND, f"grew {grown['bytes'] / 2**20:.0f} MB"
    assert Path(value["layers"][0]).read_bytes() == huge
    assert Path(value["background"]).read_bytes() == shown
    with peak_rss_growth() as grown, pytest.raises(DecodeError, match="reload the page"):
        h.painted_mask(h.PageState(picture=picture), value, settings)
    assert grown["bytes"] < RSS_BOUND


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_idle_sessions_let_go_of_their_images():
    clock = Clock()
    sessions = h.Sessions(idle_s=60, max_sessions=8, clock=clock)
    idle = inputs.Picture(rgb=np.zeros((64, 96, 3), np.uint8), name="idle")
    held = weakref.ref(idle.rgb)
    sessions.put("idle", h.PageState(picture=idle, uploaded_mask=np.ones((64, 96), bool)))
    sessions.put("busy", h.PageState(picture=inputs.Picture(np.ones((4, 4, 3), np.uint8), "b")))
    del idle
    clock.now = 30.0
    assert sessions.get("busy").picture.name == "b"  # a use: its idle time starts again
    clock.now = 61.0
    assert sessions.release_idle() == 1 and len(sessions) == 1
    gc.collect()
    assert held() is None  # nothing else kept the pixels
    assert sessions.get("idle").picture is None and sessions.get("busy").picture is not None
    clock.now = 200.0
    assert sessions.get("busy").picture is None  # every use lets idle sessions go first


def test_sessions_holding_images_are_capped_and_closed_ones_dropped():
    sessions = h.Sessions(idle_s=3600, max_sessions=2)
    for key in ("a", "b", "c"):
        sessions.put(key, h.PageState(picture=inputs.Picture(np.zeros((4, 4, 3), np.uint8), key)))
    assert sessions.get("a").picture is None  # the least recently used went first
    assert [sessions.get(k).picture.name for k in ("b", "c")] == ["b", "c"]
    sessions.drop("b")
    sessions.put("c", h.PageState())  # a cleared editor holds nothing
    assert len(sessions) == 0


def test_a_let_go_image_says_so():
    settings = LIMITS
    shown = {"background": "shown.png", "layers": []}
    with pytest.raises(ConfigError, match="let go of this image after 30 minutes"):
        h.painted_mask(h.PageState(), shown, settings)
    with pytest.raises(ConfigError, match="upload an image or pick a sample first"):
        h.painted_mask(h.PageState(), None, settings)


@pytest.mark.slow  # waits out the idle time (6 s)
def test_a_served_session_is_let_go_after_its_idle_time(tmp_path):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from batch_inpaint.models import load_inpainter
    from batch_inpaint.web.app import launch

    settings = inputs.ServeSettings(idle_minutes=0.1, manifest_root=tmp_path / "m")
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(np.full((64, 96, 3), 90, np.uint8)))
    layer = np.zeros((64, 96, 4), np.uint8)
    layer[10:30, 20:60, 3] = 255
    (tmp_path / "layer.png").write_bytes(png_bytes(layer))
    demo = launch(load_inpainter("opencv"), settings, port=None, block=False, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        client.predict(handle_file(str(image)), api_name="/image_uploaded")
        sessions = demo.page_events.sessions
        assert len(sessions) == 1
        layers = [handle_file(str(tmp_path / "layer.png"))]
        editor = {"background": handle_file(str(image)), "layers": layers, "composite": None}
        fields = ("x", "", 2, 7.5, 5, False, "full", 0, 0)
        out = client.predict(editor, *fields, api_name="/run")
        assert out[5].startswith("✓ Done")  # the run worked on the session's picture
        deadline = time.monotonic() + 60
        while len(sessions) and time.monotonic() < deadline:
            time.sleep(0.1)  # let go by the background sweep, with no request coming in
        assert len(sessions) == 0
        out = client.predict(editor, *fields, api_name="/run")  # a mistake: said, not raised
        assert out[5].startswith("⚠") and "let go of this image" in out[5]
    finally:
        demo.close()
