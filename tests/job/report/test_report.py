"""report.py: the terminal summary, report.html and `batch-inpaint report`, built from real result
rows (the job's stages and its driver steps run in process, no Ray) and checked as text and in
headless Chromium, with a screenshot in tests/artifacts/."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from batch_inpaint.cli import main
from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver import plan, results
from batch_inpaint.job.driver.finalize import finalize
from batch_inpaint.job.driver.lock import LockedError
from batch_inpaint.job.report import charts as report_charts
from batch_inpaint.job.report import page as report_html
from batch_inpaint.job.report import summary as report
from batch_inpaint.job.report.pictures import sample_indices
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.models import load_inpainter
from batch_inpaint.models.spec import model_spec
from batch_inpaint.storage.store import Storage
from tests.fixtures_ray import local_dataset, manifest_bytes, manifest_table, png

EVIL_ID = '<img src=x onerror="document.title=1">'
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def bad_rows(root: Path) -> list[dict]:
    """Rows that end as an error of each kind a person meets first, and one with nothing to do."""
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "masks" / "empty.png").write_bytes(png(np.zeros((120, 160), np.uint8)))
    return [
        {"id": "gone", "image": "images/gone.png", "mask": "masks/r000.png"},
        {"id": EVIL_ID, "image": "images/also-gone.png", "mask_boxes": [[1.0, 1.0, 4.0, 4.0]]},
        {"id": "corrupt", "image": "images/corrupt.png", "mask": "masks/r001.png"},
        {"id": "bad-box", "image": "images/r002.png", "mask_boxes": [[50.0, 50.0, 10.0, 10.0]]},
        {"id": "nothing-to-do", "image": "images/r003.png", "mask": "masks/empty.png"},
    ]


def run_stages(manifest: Path, rows: list[dict], out: Path, **cfg_kw) -> tuple[JobConfig, pa.Table]:
    """The job's three stages in process over `rows`: the result table the job would write."""
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv", **cfg_kw)
    storage = Storage(cfg.storage_options())
    ctx = JobContext(cfg, storage, manifest_base=str(manifest.parent), spec=model_spec("opencv"))
    model = ModelStage(ctx, inpainter=load_inpainter("opencv"))
    return cfg, finish_batch(model(prepare_batch(manifest_table(rows), ctx)), ctx)


@pytest.fixture
def job(tmp_path):
    manifest, rows = local_dataset(tmp_path / "in", 6, w=160, h=120, caption="c")
    rows += bad_rows(tmp_path / "in")
    cfg, table = run_stages(manifest, rows, tmp_path / "out", mode="crop", dilate=2)
    summary = results.summarize(table, time.time() - 3, time.time(), table.num_rows)
    summary.update(run_id=results.new_run_id(), output=cfg.output, success=True, problems=[])
    return cfg, table, summary


def finished_output(root: Path, n: int = 4) -> tuple[JobConfig, dict]:
    """A local output made as `run` makes it (plan, lock, stages, metadata parts, finalize),
    with the stages in process instead of on Ray."""
    manifest, rows = local_dataset(root / "in", n, w=96, h=72)
    rows += bad_rows(root / "in")[:1]
    manifest.write_bytes(manifest_bytes(rows))
    cfg = JobConfig(manifest=str(manifest), output=str(root / "out"), backend="opencv")
    run, state = plan.check_run(cfg, Storage(), echo=lambda *_: None)
    with plan.lock_for(run):
        job = plan.open_run(run, state)
        ctx = JobContext(cfg, run.storage, manifest_base=run.scan.base, spec=job.spec)
        table = finish_batch(ModelStage(ctx, inpainter=load_inpainter("opencv"))(
            prepare_batch(manifest_table(rows), ctx)), ctx)  # fmt: skip
        job.writer.add(table)
        run.processed = table.num_rows
        job.writer.flush()
        return cfg, finalize(run)


def test_report_explains_the_run(job):
    cfg, table, summary = job
    page = Path(report.write_report(Storage(), cfg, table, summary)).read_text()
    assert 'class="badge b-errors">complete, 4 errors<' in page  # amber, not green
    assert 'id="f-backend">opencv<' in page and 'id="f-model">opencv-telea<' in page
    assert 'id="f-mode">crop, crop_size native<' in page
    assert 'id="f-steps">not used by opencv<' in page and 'id="f-output-format">png<' in page
    assert 'id="n-ok">ok: 6<' in page and 'id="n-skipped">skipped: 1<' in page
    assert page.index('id="kinds-chart"') < page.index('id="timings"') < page.index('id="sample"')
    kinds = {k: page.count(f'data-kind="{k}"') for k in ("not_found", "decode", "mask")}
    assert kinds == {"not_found": 1, "decode": 1, "mask": 1}
    assert "not_found — 2 rows" in page and "<td>gone</td>" in page
    assert "no picture of the input: it cannot be decoded" in page  # a failed decode: said so
    assert "no picture of the input: it was not found" in page
    bad_box = page.split('data-kind="mask"')[1].split('class="kind"')[0]
    assert 'alt="input"' in bad_box and "no mask picture" in bad_box  # the input, and why no mask
    assert EVIL_ID not in page and "&lt;img src=x onerror=" in page  # no markup from data
    assert "thumbnail unavailable" not in page


def test_status_colours(job):
    cfg, table, summary = job
    ok_only = table.filter(pa.compute.equal(table.column("status"), "ok"))
    page = report.render({**summary, "counts": {"ok": 6}}, ok_only, cfg, Storage(), sample=2)
    assert 'class="badge b-complete">complete<' in page and 'id="no-errors"' in page
    broken = {**summary, "success": False, "problems": ["1 manifest row(s) have no result"]}
    page = report.render(broken, table, cfg, Storage(), sample=0)
    assert 'class="badge b-incomplete">incomplete<' in page
    assert "Why this run is incomplete" in page and "1 manifest row(s) have no result" in page


def test_sample_is_drawn_across_statuses_and_fixed_by_the_run_id(job):
    cfg, table, summary = job
    idx = sample_indices(table, 6, "run-1")
    statuses = [table.column("status")[i].as_py() for i in idx]
    assert statuses.count("ok") == 3 and statuses.count("skipped") == 1  # the skipped
    assert statuses.count("error") == 2  # row's unused share went to the others, ok first
    assert idx == sample_indices(table, 6, "run-1")
    assert len({tuple(sample_indices(table, 6, f"run-{k}")) for k in range(8)}) > 1
    assert len(sample_indices(table, 100, "r")) == table.num_rows
    page = report.render(summary, table, cfg, Storage(), sample=3)
    shown = [c.split('data-status="')[1].split('"')[0] for c in page.split('class="card"')[1:]]
    assert shown == ["ok", "ok", "skipped"]  # the error rows are under Errors, not repeated


def test_timings_and_throughput(job):
    _, table, _ = job
    stats = {s["stage"]: s for s in report_charts.stage_stats(table)}
    v = np.array([x for x in table.column("model_s").to_pylist() if x is not None])
    assert stats["model_s"]["rows"] == len(v)
    assert stats["model_s"]["p95"] == pytest.approx(np.percentile(v, 95))
    assert stats["model_s"]["mean"] == pytest.approx(v.mean())
    start = time.time() - 60
    rates, span = report_charts.throughput(table, start, bins=10)
    assert len(rates) == 10 and rates.sum() * span / 10 == pytest.approx(table.num_rows)
    assert "<polygon" in report_charts.throughput_svg(rates, span)
    assert (
        report_charts.run_start("20260102T030405-abc")
        == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).timestamp()
    )


def test_transient_errors_are_marked_as_redone(job):
    cfg, table, summary = job
    kinds = table.column("error_kind").to_pylist()
    kinds[kinds.index("decode")] = "storage_transient"
    table = table.set_column(table.schema.get_field_index("error_kind"), "error_kind",
                             pa.array(kinds, pa.string()))  # fmt: skip
    page = report.render(summary, table, cfg, Storage(), sample=0)
    block = page.split('data-kind="storage_transient"')[1].split("</h3>")[0]
    assert "transient: redone by the next run" in block
    assert 'fill="#e0a400"' in page  # its bar is amber


def test_a_row_whose_thumbnail_fails_does_not_break_the_report(job):
    cfg, table, summary = job
    ok = table.filter(pa.compute.equal(table.column("status"), "ok"))
    Path(cfg.output, ok.column("output")[0].as_py()).unlink()  # an output gone since
    page = report.render(summary, ok, cfg, Storage(), sample=24)
    assert page.count("thumbnail unavailable") == 1 and page.count('class="card"') == 6


def test_errors_listed_are_capped(monkeypatch, job):
    cfg, table, summary = job
    monkeypatch.setattr(report_html, "MAX_ERRORS_PER_KIND", 1)
    page = report.render(summary, table, cfg, Storage(), sample=0)
    assert "... and 1 more not_found rows (see metadata/)" in page
    monkeypatch.setattr(report_html, "MAX_ERRORS_SHOWN", 2)
    page = report.render(summary, table, cfg, Storage(), sample=0)
    assert page.count("<tr><td>") == 2


def test_page_size_does_not_grow_with_a_million_rows(tmp_path):
    n = 1_000_000
    status = np.where(np.arange(n) % 10 == 0, "error", "ok")
    kinds = np.where(status == "error", np.array(["not_found", "decode", "model"])[np.arange(n) % 3], None)  # fmt: skip
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    table = pa.table({
        "id": pa.array([f"row-{i:07d}" for i in range(n)]),
        "status": pa.array(status), "error_kind": pa.array(kinds, pa.string()),
        "error": pa.array(np.where(status == "error", "image x: not found", None), pa.string()),
        "output": pa.array(np.where(status == "ok", "images/none.png", None), pa.string()),
        "image": pa.array(np.full(n, "images/none.png")),
        "backend": pa.array(np.full(n, "opencv")), "model": pa.array(np.full(n, "opencv-telea")),
        "revision": pa.nulls(n, pa.string()),
        "prepare_s": np.random.default_rng(0).random(n), "model_s": np.full(n, 0.5),
        "write_s": np.full(n, 0.1),
        "finished_at": pa.array(t0.timestamp() * 1000 + np.arange(n) * 10.0, pa.float64())
        .cast(pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
    })  # fmt: skip
    cfg = JobConfig(manifest=str(tmp_path / "m.parquet"), output=str(tmp_path / "out"),
                    backend="opencv")  # fmt: skip
    summary = results.summarize(table, 0.0, 10_000.0, n)
    summary.update(run_id="20260101T000000-aaaaaa", success=True, problems=[], output=cfg.output)
    started = time.perf_counter()
    page = report.render(summary, table, cfg, Storage(), sample=24)
    took = time.perf_counter() - started
    assert len(page.encode()) < 600_000, len(page.encode())
    assert took < 30, took
    print(f"1,000,000 rows: {len(page.encode()):,} bytes in {took:.1f} s")
    assert page.count("<tr><td>") == 3 * report_html.MAX_ERRORS_PER_KIND
    assert page.count('class="card"') == 24 and "100,000" in page


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


def test_report_command_rebuilds_the_page_and_side_by_side_pictures(tmp_path, capsys):
    cfg, summary = finished_output(tmp_path)
    out = Path(cfg.output)
    (out / "report.html").unlink()
    assert main(["report", "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "FINISHED WITH ERRORS - 4 ok, 1 error" in said and "4 side-by-side" in said
    page = (out / "report.html").read_text()
    assert "complete, 1 error<" in page and summary["run_id"] in page
    sheets = sorted((out / "side_by_side").glob("*.png"))
    assert [p.name for p in sheets] == [f"r{i:03d}.png" for i in range(4)]
    w, h = Image.open(sheets[0]).size
    assert (w, h) == (3 * 96, 72)  # input | mask | output
    (out / "_SUCCESS").unlink()  # a later run that died: the page no longer says complete
    assert main(["report", "--output", str(out), "--side-by-side", str(tmp_path / "sbs")]) == 0
    assert 'class="badge b-incomplete"' in (out / "report.html").read_text()
    assert len(list((tmp_path / "sbs").glob("*.png"))) == 4


def test_report_command_refuses_while_a_run_holds_the_lock(tmp_path):
    cfg, _ = finished_output(tmp_path)
    with plan.lock_for(plan.check_run(cfg, Storage(), echo=lambda *_: None)[0]):
        with pytest.raises(LockedError, match="in progress"):
            report.regenerate(cfg.output)
        assert main(["report", "--output", cfg.output]) == 3


def test_report_command_on_a_folder_no_run_wrote(tmp_path, capsys):
    assert main(["report", "--output", str(tmp_path)]) == 2
    assert "no job.json" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")
def test_report_in_headless_chromium(job):
    sync_api = pytest.importorskip("playwright.sync_api")
    cfg, table, summary = job
    uri = report.write_report(Storage(), cfg, table, summary)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(Path(uri).as_uri())
            assert page.inner_text("#state") == "complete, 4 errors"
            colour = page.eval_on_selector("#state", "e => getComputedStyle(e).backgroundColor")
            assert colour == "rgb(208, 138, 0)"  # amber
            assert page.inner_text("#f-backend") == "opencv"
            top = {s: page.eval_on_selector(s, "e => e.getBoundingClientRect().top")
                   for s in ("#kinds-chart", "#timings", "#throughput", "#sample")}  # fmt: skip
            assert top["#kinds-chart"] < top["#timings"] < top["#sample"]
            assert top["#kinds-chart"] < 900  # the errors start on the first screen
            widths = page.eval_on_selector_all(
                "img", "els => els.map(e => e.complete && e.naturalWidth)"
            )
            assert len(widths) >= 9 and all(w and w > 0 for w in widths), widths
            cells = page.eval_on_selector_all(
                "table.errors tr",
                "rows => rows.filter(r => r.cells[0].tagName == 'TD')"
                ".map(r => [...r.cells].map(c => c.innerText))",
            )
            by_id = {c[0]: c for c in cells}
            assert set(by_id) == {"gone", EVIL_ID, "corrupt", "bad-box"}  # ids shown as text
            assert "not found" in by_id["gone"][1] and by_id["gone"][2] == "images/gone.png"
            bars = page.eval_on_selector_all("#kinds-chart rect", "els => els.length")
            assert bars == 3
            assert page.title() != "1"  # the would-be script never ran
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
            page.set_viewport_size({"width": 420, "height": 900})  # a phone: no sideways scroll
            assert page.evaluate("document.documentElement.scrollWidth") <= 440
            page.screenshot(path=str(ARTIFACTS / "report-narrow.png"), full_page=True)
        finally:
            browser.close()
