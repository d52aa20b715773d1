"""report.html for judging fills (issue 25, item 9): its cards link to the full-size output (and
the input and mask where a browser can open them), relative links that work from a copy; its
sample leaves out the rows already shown under Errors; it records the manifest and the command
that reproduces the run; `report --to DIR` writes a local copy, reading the output only."""

from __future__ import annotations

import re
from pathlib import Path

from batch_inpaint.cli import main
from tests.job.report.test_report import finished_output


def test_a_local_copy_with_working_links(tmp_path, capsys):
    cfg, summary = finished_output(tmp_path / "run", n=6)
    out = Path(cfg.output)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    copy = tmp_path / "copy"
    assert main(["report", "--output", str(out), "--to", str(copy)]) == 0
    assert str(copy / "report.html") in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # only read
    page = (copy / "report.html").read_text()
    links = re.findall(r'<a href="([^"]+)"', page)
    relative = [h for h in links if not h.startswith(("file://", "http"))]
    assert relative and all(h.startswith("images/") for h in relative)
    assert all((copy / h).is_file() for h in relative)  # the copy's links work
    assert all(Path(h.removeprefix("file://")).is_file() for h in links if h.startswith("file://"))
    assert len(list((copy / "side_by_side").iterdir())) == summary["counts"]["ok"]
    # the manifest and the command that runs it again
    assert f'id="manifest">{cfg.manifest}<' in page
    command = re.search(r'<code id="command">([^<]+)</code>', page)[1]
    assert command.startswith(f"batch-inpaint run --manifest {cfg.manifest} --output {out}")
    assert "--backend opencv" in command


def test_the_sample_leaves_out_rows_shown_under_errors(tmp_path):
    cfg, summary = finished_output(tmp_path / "run", n=3)
    page = (Path(cfg.output) / "report.html").read_text()
    errors = page.split('id="sample"', 1)[0]
    sample = page.split('id="sample"', 1)[1]
    failed = re.findall(r"<tr><td>([^<]+)</td>", errors)
    assert failed and not any(f'data-id="{rid}"' in sample for rid in failed)
    assert summary["counts"]["ok"] == len(re.findall(r'data-status="ok"', sample))
