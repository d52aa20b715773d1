"""Issue 25 in headless Chromium: report.html's thumbnails open the full-size input, mask and
output from a copy of the output folder (file://, the original moved away), and the web page's
message under Inpaint comes into view after a run. Skipped, with the reason, where Chromium or
Playwright is missing (the `browser` fixture of test_web_browser.py)."""

from __future__ import annotations

import contextlib
import shutil

import pytest
from PIL import Image

from batch_inpaint.cli import main
from tests.fixtures_ray import local_dataset
from tests.test_web_browser import (  # noqa: F401 - browser: the fixture, shared
    SAMPLE,
    browser,
    click_and_wait,
    free_port,
    paint_stroke,
    upload_image,
    wait_for_editor,
)

pytestmark = pytest.mark.slow
W, H = 96, 72


def test_report_thumbnails_open_full_size_pictures_from_a_copied_folder(browser, tmp_path):  # noqa: F811
    _, rows = local_dataset(tmp_path / "in", 3, w=W, h=H)
    built = tmp_path / "in" / "built.parquet"  # as the quickstart does: manifest build, then run
    assert main(["manifest", "build", "--images", str(tmp_path / "in" / "images"), "--masks",
                 str(tmp_path / "in" / "masks"), "--output", str(built)]) == 0  # fmt: skip
    out = tmp_path / "out"
    assert main(["run", "--manifest", str(built), "--output", str(out), "--backend", "opencv",
                 "--executor", "local"]) == 0  # fmt: skip
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(out, copy)
    out.rename(tmp_path / "moved-away")  # only the copy can answer a relative link

    page = browser.new_page()
    try:
        page.goto((copy / "report.html").as_uri())
        cards = page.locator("#sample .card")
        assert cards.count() == len(rows)
        # every thumbnail is drawn (none broken)
        assert page.evaluate("[...document.querySelectorAll('#sample img')].every("
                             "i => i.complete && i.naturalWidth > 0)")  # fmt: skip
        for i in range(cards.count()):
            card = cards.nth(i)
            rid = card.get_attribute("data-id")
            links = card.locator("a:has(img)")
            kinds = [links.nth(j).locator("img").get_attribute("alt") for j in range(links.count())]
            assert kinds == ["input", "mask", "output"], (rid, kinds)
            for j, kind in enumerate(kinds):
                href = links.nth(j).get_attribute("href")
                if kind == "output":  # written by the run: travels with the folder
                    assert not href.startswith(("/", "file:")), href
                with page.expect_popup() as opened:  # a click, as a person does: a new tab
                    links.nth(j).click()
                tab = opened.value
                tab.wait_for_load_state()
                size = tab.evaluate("[document.images[0]?.naturalWidth, "
                                    "document.images[0]?.naturalHeight]")  # fmt: skip
                assert size == [W, H], (rid, kind, tab.url, size)  # full size, not the thumbnail
                if kind == "output":
                    assert tab.url == (copy / "images" / f"{rid}.png").as_uri()
                    assert Image.open(copy / "images" / f"{rid}.png").size == (W, H)
                else:  # the inputs stay where the manifest names them
                    folder = {"input": "images", "mask": "masks"}[kind]
                    assert tab.url == (tmp_path / "in" / folder / f"{rid}.png").as_uri()
                tab.close()
    finally:
        page.close()


@pytest.fixture(scope="module")
def opencv_page_url(tmp_path_factory):
    pytest.importorskip("gradio")
    from batch_inpaint.models import load_inpainter
    from batch_inpaint.web import inputs
    from batch_inpaint.web.app import launch

    settings = inputs.ServeSettings(manifest_root=tmp_path_factory.mktemp("manifests"))
    port = free_port()
    demo = launch(load_inpainter("opencv"), settings, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


IN_VIEW = """(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
                        // +1: the page scrolls by whole pixels, the layout has fractions
                        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight + 1; }"""


def test_the_message_under_inpaint_comes_into_view(browser, opencv_page_url):  # noqa: F811
    # a small laptop's window, scrolled so that Inpaint is at the bottom edge: its message,
    # under it, is below the fold when the button is pressed
    page = browser.new_page(viewport={"width": 1280, "height": 700})
    try:
        page.goto(opencv_page_url)
        page.wait_for_selector("#editor canvas")
        upload_image(page, SAMPLE)
        wait_for_editor(page)
        page.evaluate("""() => { const b = document.querySelector('#run').getBoundingClientRect();
                                 window.scrollBy(0, b.bottom - window.innerHeight + 4); }""")
        page.wait_for_timeout(300)
        top = page.evaluate("document.querySelector('#run-message').getBoundingClientRect().top")
        assert top >= 690, f"the message area is in view already ({top}): nothing to test"
        page.click("#run")  # nothing painted: a mistake, said under the button
        page.get_by_text("nothing to inpaint").wait_for(timeout=20_000)
        page.wait_for_function(IN_VIEW, arg="#run-message", timeout=10_000)
        assert page.inner_text("#run-message").startswith("⚠")

        # a success in a window that holds both: the message and the result's top in view
        page.set_viewport_size({"width": 1400, "height": 1300})
        page.evaluate("window.scrollTo(0, 0)")
        paint_stroke(page)
        page.evaluate("""() => { const b = document.querySelector('#run').getBoundingClientRect();
                                 window.scrollBy(0, b.bottom - window.innerHeight + 4); }""")
        click_and_wait(page, "#run", "#result-download")
        page.wait_for_function(IN_VIEW, arg="#run-message", timeout=10_000)
        assert page.inner_text("#run-message").startswith("✓ Done in")
        # the scroll is smooth: wait for it to settle rather than read it mid-way (a busy CPU)
        top_of_result = "document.querySelector('#result').getBoundingClientRect().top"
        with contextlib.suppress(Exception):  # not settled in time: the assert below says where
            page.wait_for_function(f"() => {{ const t = {top_of_result}; return t >= 0 && t < 1000; }}",
                                   timeout=10_000)  # fmt: skip
        result_top = page.evaluate(top_of_result)
        assert 0 <= result_top < 1300 - 300, result_top  # and 300 px of the result at least
    finally:
        page.close()
