"""report.py: the terminal summary and report.html, built from a real result table (the job's
stages run in process, no Ray) and checked as text and in headless Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job import report, results
from batch_inpaint.job.stages import JobContext, ModelStage, finish_batch, prepare_batch
from batch_inpaint.models import load_inpainter
from batch_inpaint.models.spec import model_spec
from batch_inpaint.storage.store import Storage
from tests.fixtures_ray import local_dataset, manifest_table

EVIL_ID = '<img src=x onerror="document.title=1">'
CHROMIUM = "/usr/bin/chromium"


def run_stages(manifest: Path, rows: list[dict], out: Path, **cfg_kw) -> tuple[JobConfig, pa.Table]:
    """The job's three stages in process over `rows`: the result table the job would write."""
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv", **cfg_kw)
    storage = Storage(cfg.storage_options())
    ctx = JobContext(cfg, storage, manifest_base=str(manifest.parent), spec=model_spec("opencv"))
    table = manifest_table(rows)
    model = ModelStage(ctx, inpainter=load_inpainter("opencv"))
    return cfg, finish_batch(model(prepare_batch(table, ctx)), ctx)


@pytest.fixture
def job(tmp_path):
    manifest, rows = local_dataset(tmp_path / "in", 3, caption="c")
    rows += [
        {"id": "gone", "image": "images/gone.png", "mask": "masks/r000.png"},
        {"id": EVIL_ID, "image": "images/also-gone.png", "mask_boxes": [[1.0, 1.0, 4.0, 4.0]]},
    ]
    cfg, table = run_stages(manifest, rows, tmp_path / "out")
    summary = results.summarize(table, 0.0, 2.0, table.num_rows)
    summary.update(run_id="r1", output=cfg.output, success=True, problems=[])
    return cfg, table, summary


def test_report_html_holds_counts_samples_and_escaped_errors(job):
    cfg, table, summary = job
    uri = report.write_report(Storage(), cfg, table, summary)
    page = Path(uri).read_text()
    assert 'id="n-ok">ok: 3<' in page and 'id="n-error">error: 2<' in page
    assert page.count('class="card"') == 3 and page.count("data:image/jpeg;base64,") == 9
    assert "thumbnail unavailable" not in page
    assert "<td>gone</td><td>not_found</td>" in page
    assert EVIL_ID not in page and "&lt;img src=x onerror=" in page  # no markup from data


def test_report_sample_limits_the_contact_sheet(job):
    cfg, table, summary = job
    page = report.render(summary, table, cfg, Storage(), sample=1)
    assert page.count('class="card"') == 1


def test_a_row_whose_thumbnail_fails_does_not_break_the_report(job):
    cfg, table, summary = job
    Path(cfg.output, table.column("output")[0].as_py()).unlink()  # an output gone since
    page = report.render(summary, table, cfg, Storage(), sample=24)
    assert page.count("thumbnail unavailable") == 1 and page.count('class="card"') == 3


def test_many_errors_are_capped(monkeypatch, job):
    cfg, table, summary = job
    monkeypatch.setattr(report, "MAX_ERRORS_SHOWN", 1)
    page = report.render(summary, table, cfg, Storage(), sample=0)
    assert "... and 1 more (see metadata/)" in page


def test_relative_manifest_in_the_working_directory_gets_thumbnails(tmp_path, monkeypatch):
    """`--manifest manifest.parquet` run from the data folder: rows' relative URIs resolve
    against '.', as the job resolved them."""
    manifest, rows = local_dataset(tmp_path / "in", 1)
    cfg, table = run_stages(manifest, rows, tmp_path / "out")
    monkeypatch.chdir(manifest.parent)
    cfg = JobConfig.from_dict({**cfg.to_dict(), "manifest": "manifest.parquet"})
    page = report.render({"counts": {"ok": 1}}, table, cfg, Storage(), sample=5)
    assert "thumbnail unavailable" not in page
    assert page.count("data:image/jpeg;base64,") == 3


def test_summary_text():
    summary = {
        "success": False,
        "counts": {"ok": 5, "error": 2, "skipped": 1},
        "rows_this_run": 8,
        "rows_per_s": 1.5,
        "errors_by_kind": {"decode": 1, "not_found": 1},
        "problems": ["1 manifest row(s) have no result, e.g. ['x']"],
        "output": "s3://b/out",
    }
    text = report.summary_text(summary, "s3://b/out/report.html")
    assert text.startswith("batch-inpaint: INCOMPLETE - 5 ok, 2 error, 1 skipped")
    assert "decode: 1, not_found: 1" in text and "problem: 1 manifest row(s)" in text
    assert "s3://b/out/report.html" in text and "s3://b/out/images/" in text


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")
def test_report_in_headless_chromium(job):
    sync_api = pytest.importorskip("playwright.sync_api")
    cfg, table, summary = job
    uri = report.write_report(Storage(), cfg, table, summary)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page()
            page.goto(Path(uri).as_uri())
            assert page.inner_text("#state") == "SUCCESS"
            assert page.inner_text("#n-ok") == "ok: 3"
            assert page.inner_text("#n-error") == "error: 2"
            assert page.inner_text("#n-skipped") == "skipped: 0"
            widths = page.eval_on_selector_all(
                "#sample img", "els => els.map(e => e.complete && e.naturalWidth)"
            )
            assert len(widths) == 9 and all(w and w > 0 for w in widths), widths
            cells = page.eval_on_selector_all(
                "#errors tr", "rows => rows.slice(1).map(r => [...r.cells].map(c => c.innerText))"
            )
            by_id = {c[0]: c for c in cells}
            assert set(by_id) == {"gone", EVIL_ID}  # the id shown as text, not as markup
            assert by_id["gone"][1] == "not_found" and "images/gone.png" in by_id["gone"][2]
            assert "row 'gone'" in by_id["gone"][2] and "not found" in by_id["gone"][2]
            assert page.eval_on_selector_all("#errors img", "els => els.length") == 0
            assert page.title() != "1"  # the would-be script never ran
        finally:
            browser.close()
    shutil.rmtree(Path(uri).parent, ignore_errors=True)
