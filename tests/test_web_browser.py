"""The web page in headless Chromium (Playwright): upload, paint, run, download, add to manifest.

Each backend gets its own server on a free port; one browser serves all tests. Screenshots go to
tests/artifacts/ (gitignored). Skipped, with the reason, where Chromium or Playwright is missing.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_inpaint.manifest.manifest import Manifest
from batch_inpaint.web import inputs

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "images" / "coffee.png"
ARTIFACTS = ROOT / "tests" / "artifacts"
MAX_UPLOAD_MB = 2


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (run `make browser` as root to install it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:  # noqa: BLE001 - any launch failure means no browser here
        pw.stop()
        pytest.skip(f"Chromium at {CHROMIUM} did not start: {exc}")
    yield b
    b.close()
    pw.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["tiny", "opencv"])
def server(request, tmp_path_factory):
    """(url, settings, backend): the page on a free port, with the tiny checkpoint or opencv."""
    pytest.importorskip("gradio")
    from batch_inpaint.models import load_inpainter
    from batch_inpaint.web.app import launch

    backend = request.param
    if backend == "tiny":
        inpainter = load_inpainter("tiny", str(request.getfixturevalue("tiny_model_dir")))
    else:
        inpainter = load_inpainter("opencv")
    settings = inputs.ServeSettings(
        max_upload_mb=MAX_UPLOAD_MB,
        max_pixels=4_000_000,
        manifest_root=tmp_path_factory.mktemp(f"manifests-{backend}"),
    )
    port = free_port()
    demo = launch(inpainter, settings, port=port, block=False, quiet=True)
    assert demo.max_file_size == settings.max_upload_bytes
    yield f"http://127.0.0.1:{port}/", settings, backend
    demo.close()


@pytest.fixture
def page(browser, server):
    p = browser.new_page(viewport={"width": 1400, "height": 1300}, accept_downloads=True)
    p.goto(server[0])
    p.wait_for_selector("#editor canvas")
    yield p
    p.close()


def upload_image(page, path: Path) -> None:
    page.set_input_files("#image-upload input[type=file]", str(path))


def wait_for_editor(page) -> None:
    """Until the editor's canvas is on top at its centre: gradio covers an output with a loading
    overlay while an event runs, and a stroke drawn on the overlay selects text instead."""
    page.wait_for_function(
        """() => {
            const c = document.querySelector('#editor canvas');
            if (!c) return false;
            const r = c.getBoundingClientRect();
            const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
            return top && top.tagName === 'CANVAS' && /\\d+%/.test(
                document.querySelector('#editor').innerText);
        }""",
        timeout=20_000,
    )
    page.wait_for_timeout(300)


def zoom(page) -> float:
    """The editor's zoom (the image's display scale), as its toolbar shows it ('86%')."""
    return int(re.search(r"(\d+)%", page.inner_text("#editor")).group(1)) / 100


def paint_stroke(page, length: int = 120) -> float:
    """A horizontal stroke through the canvas centre (= the image centre); returns the zoom."""
    wait_for_editor(page)
    box = page.locator("#editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - length / 2, cy)
    page.mouse.down()
    # Few pointer events: the brush joins them with a line, and each one costs the software-GL
    # canvas a redraw (about a second here).
    page.mouse.move(cx, cy)
    page.mouse.move(cx + length / 2, cy)
    page.mouse.up()
    assert page.evaluate("window.getSelection().toString()") == "", "the stroke missed the canvas"
    page.wait_for_timeout(500)  # the editor sends its layers after the stroke ends
    return zoom(page)


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def click_and_wait(page, button: str, selector: str, timeout: float = 60_000) -> None:
    """Click `button`, then wait for `selector` to show; fail at once with the page's message
    if a new error or warning toast comes first (older toasts may still be on screen)."""
    before = page.locator(".toast-body").count()
    page.click(button)
    try:
        page.wait_for_function(
            """([sel, n]) => {
                const el = document.querySelector(sel);
                const shown = el && el.offsetParent !== null && el.getBoundingClientRect().height;
                return shown || document.querySelectorAll('.toast-body').length > n;
            }""",
            arg=[selector, before],
            timeout=timeout,
        )
    except Exception:
        screenshot(page, "web-timeout.png")
        raise
    if not page.locator(selector).is_visible():
        pytest.fail(f"the page said: {page.locator('.toast-body').last.inner_text()}")


def run_and_download(page, tmp_path: Path) -> np.ndarray:
    click_and_wait(page, "#run", "#result-download")
    with page.expect_download(timeout=30_000) as dl:
        page.click("#result-download")
    path = tmp_path / "result.png"
    dl.value.save_as(path)
    return np.asarray(Image.open(path).convert("RGB"))


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_paint_run_download_changes_only_the_stroke(page, server, tmp_path):
    _, _, backend = server
    upload_image(page, SAMPLE)
    set_number(page, "steps", 2)
    if backend == "tiny":
        # crop mode: the tiny checkpoint's native size is 64 px, so full mode would run it on
        # all 600x400 pixels (slow attention); crop mode runs it around the stroke only
        page.get_by_text("crop: only around").click()
    z = paint_stroke(page)
    result = run_and_download(page, tmp_path)
    original = np.asarray(Image.open(SAMPLE).convert("RGB"))
    assert result.shape == original.shape

    # The stroke runs through the image centre, ~120 screen px long and a brush wide.
    hgt, wid = original.shape[:2]
    changed = (result != original).any(axis=-1)
    half = 60 / z
    core = changed[hgt // 2 - 2 : hgt // 2 + 3, int(wid / 2 - half / 2) : int(wid / 2 + half / 2)]
    assert core.mean() > 0.5, f"the stroke's centre hardly changed ({core.mean():.0%})"
    band = np.zeros_like(changed)
    reach = int(half + 40)  # brush radius ("auto") plus slack
    band[max(0, hgt // 2 - reach) : hgt // 2 + reach, max(0, int(wid / 2 - reach)) :][
        :, : 2 * reach
    ] = True
    assert not (changed & ~band).any(), "pixels far from the stroke changed"
    screenshot(page, f"web-{backend}.png")


def test_bad_uploads_show_their_message_and_the_page_goes_on(page, server, tmp_path):
    junk = tmp_path / "holiday.png"
    junk.write_bytes(b"this is not a picture at all")
    upload_image(page, junk)
    toast = page.get_by_text("holiday.png can't be used: not an image")
    toast.first.wait_for(timeout=20_000)
    screenshot(page, f"web-bad-upload-{server[2]}.png")

    bomb = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(bomb)  # 9 megapixels in a few KB; the limit is 4
    upload_image(page, bomb)
    page.get_by_text("decompression bomb guard").first.wait_for(timeout=20_000)

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_UPLOAD_MB * 2**20 + 10))
    upload_image(page, big)
    # gradio refuses it before it reaches the server's handlers, with its own message
    page.get_by_text("exceed the maximum allowed size").first.wait_for(timeout=20_000)

    upload_image(page, SAMPLE)  # and the page still works
    set_number(page, "steps", 1)
    page.get_by_text("crop: only around").click()
    paint_stroke(page)
    assert run_and_download(page, tmp_path).shape == (400, 600, 3)


def test_sample_picker_and_add_to_manifest(page, server, tmp_path):
    _, settings, backend = server
    if backend == "tiny":
        pytest.skip("the manifest path is the same for every backend; opencv is faster")
    page.locator("#editor").scroll_into_view_if_needed()
    page.get_by_text("Samples (click one)").wait_for()
    # the thumbnails come in the samples' name order; pick chelsea (the cat)
    names = list(inputs.find_samples())
    page.locator(".gallery-item, button.gallery-item, [data-testid='dataset'] button").nth(
        names.index("chelsea")
    ).click()
    paint_stroke(page, length=60)
    page.fill("#manifest-name textarea, #manifest-name input", "cats from the page")
    page.click("#add")
    page.get_by_text("Added row").wait_for(timeout=20_000)
    rows = list(
        Manifest.read(str(Path(settings.manifest_root) / "cats-from-the-page" / "manifest.parquet"))
    )
    assert len(rows) == 1 and rows[0]["image"].endswith("chelsea.png")
    mask = np.asarray(
        Image.open(
            io.BytesIO(
                (Path(settings.manifest_root) / "cats-from-the-page" / rows[0]["mask"]).read_bytes()
            )
        )
    )
    assert mask.shape == (300, 451) and (mask > 0).sum() > 100
