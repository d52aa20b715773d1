"""The web page in headless Chromium (Playwright): upload, paint, run, download, add to manifest;
the result brought into view, mistakes shown beside the button (one log line each, no traceback,
no red "Error" badge), controls the backend ignores disabled.

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

from batch_inpaint.detect.base import BoxesDetector, Detection
from batch_inpaint.detect.provider import MaskProvider
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
WATERMARK = (420, 320, 560, 370)  # x0, y0, x1, y1 on the 600x400 sample


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
    # the Detect button finds a "watermark" at known boxes (BoxesDetector: no model)
    provider = MaskProvider(BoxesDetector([Detection("watermark", 0.9, WATERMARK)]))
    demo = launch(inpainter, settings, port=port, block=False, quiet=True, provider=provider)
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
    if a new toast or a mistake in the message area comes first (older toasts may still be on
    screen)."""
    before = page.locator(".toast-body").count()
    page.click(button)
    try:
        page.wait_for_function(
            """([sel, n]) => {
                const el = document.querySelector(sel);
                const shown = el && el.offsetParent !== null && el.getBoundingClientRect().height;
                const said = document.querySelector('#run-message')?.innerText || '';
                return shown || said.startsWith('⚠')
                    || document.querySelectorAll('.toast-body').length > n;
            }""",
            arg=[selector, before],
            timeout=timeout,
        )
    except Exception:
        screenshot(page, "web-timeout.png")
        raise
    if not page.locator(selector).is_visible():
        said = page.inner_text("#run-message")
        toasts = page.locator(".toast-body")
        pytest.fail(
            f"the page said: {said or (toasts.last.inner_text() if toasts.count() else '')}"
        )


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
    if backend == "tiny":
        set_number(page, "steps", 2)
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


def test_detect_fills_the_mask_and_inpaint_uses_it(page, server, tmp_path):
    if server[2] == "tiny":
        pytest.skip("the Detect path is the same for every backend; opencv is faster")
    upload_image(page, SAMPLE)
    wait_for_editor(page)
    page.fill("#detect-queries textarea, #detect-queries input", "cat")
    page.click("#detect")
    page.get_by_text("Nothing found for cat").first.wait_for(timeout=20_000)
    page.fill("#detect-queries textarea, #detect-queries input", "watermark, text")
    page.click("#detect")
    page.get_by_text("Found 1 for watermark, text: watermark 0.90").first.wait_for(timeout=20_000)
    assert "420, 320, 560, 370" in page.inner_text("#detections")
    z = paint_stroke(page)  # edited by hand: the editor now sends its own canvas back
    screenshot(page, "web-detect.png")
    result = run_and_download(page, tmp_path)
    original = np.asarray(Image.open(SAMPLE).convert("RGB"))
    changed = (result != original).any(axis=-1)
    x0, y0, x1, y1 = WATERMARK
    allowed = np.zeros_like(changed)
    allowed[y0:y1, x0:x1] = True
    assert changed[allowed].mean() > 0.5, "the detected box hardly changed"
    hgt, wid = original.shape[:2]
    half, reach = 60 / z, int(60 / z + 40)  # the stroke: through the centre, a brush wide
    core = changed[hgt // 2 - 2 : hgt // 2 + 3, int(wid / 2 - half / 2) : int(wid / 2 + half / 2)]
    assert core.mean() > 0.5, "the stroke painted after Detect hardly changed"
    allowed[hgt // 2 - reach : hgt // 2 + reach, wid // 2 - reach : wid // 2 + reach] = True
    assert not (changed & ~allowed).any(), "pixels outside the box and the stroke changed"


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
    if server[2] == "tiny":
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
    page.click("#add")  # the same row again
    page.get_by_text("nothing added").wait_for(timeout=20_000)
    assert "Already in" in page.inner_text("#add-status")
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


IGNORABLE = {  # the controls opencv ignores, by the element each one is typed into
    "prompt": "#prompt textarea",
    "negative-prompt": "#negative-prompt textarea",
    "steps": "#steps input[type=number]",
    "guidance": "#guidance input[type=number]",
    "seed": "#seed input[type=number]",
    "random-seed": "#random-seed input[type=checkbox]",
}


def test_ignored_controls_are_disabled_and_the_result_comes_into_view(browser, server, tmp_path):
    url, _, backend = server
    # a small laptop's window: the result, below the editor, starts below the fold
    page = browser.new_page(viewport={"width": 1280, "height": 700}, accept_downloads=True)
    try:
        page.goto(url)
        page.wait_for_selector("#editor canvas")
        off = backend == "opencv"
        for name, sel in IGNORABLE.items():
            assert page.locator(sel).is_disabled() == off, name
        assert ("not used by opencv" in page.inner_text("#prompt")) == off

        upload_image(page, SAMPLE)
        page.get_by_text("crop: only around").click()
        if not off:
            set_number(page, "steps", 1)
        paint_stroke(page)
        top = page.evaluate("document.querySelector('#result').getBoundingClientRect().top")
        assert top > 700, "the result is in view already: nothing to test"
        click_and_wait(page, "#run", "#result-download")
        page.wait_for_function(
            """() => { const r = document.querySelector('#result').getBoundingClientRect();
                       return r.top >= 0 && r.top < window.innerHeight / 2; }""",
            timeout=10_000,
        )
        said = page.inner_text("#run-message")
        assert said.startswith("✓ Done in") and ("seed" in said) != off
        job_yaml = page.inner_text("#job-yaml")
        assert f"backend: {backend}" in job_yaml
        assert ("prompt:" in job_yaml) != off and ("steps:" in job_yaml) != off
        page.screenshot(path=str(screenshot_path(f"web-result-in-view-{backend}.png")))
    finally:
        page.close()


def test_a_mistake_shows_beside_the_button_with_one_log_line(page, server, caplog, capfd):
    capfd.readouterr()
    with caplog.at_level("WARNING", logger="batch_inpaint.web"):
        page.click("#run")  # nothing loaded yet
        page.get_by_text("upload an image or pick a sample first").wait_for(timeout=20_000)
        upload_image(page, SAMPLE)
        wait_for_editor(page)
        page.click("#run")  # nothing painted
        page.get_by_text("nothing to inpaint").wait_for(timeout=20_000)
    said = page.inner_text("#run-message")
    assert said.startswith("⚠") and "Mask problem" in said and "paint over what should go" in said
    assert page.get_by_text("Error", exact=True).count() == 0, "a red Error badge is shown"
    assert "Error" not in page.inner_text("#seed")
    lines = [r.getMessage() for r in caplog.records if r.name == "batch_inpaint.web"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("web run: upload an image or pick a sample first")
    assert lines[1].startswith("web run: nothing to inpaint")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    screenshot(page, f"web-mistake-{server[2]}.png")


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
