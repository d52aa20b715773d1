"""Issue 25, item 10: the progress line's rate and the summary's rows/s are one figure (rows over
the run's wall time, start-up included), and a rerun with nothing to do says so instead of
"0.0 rows/s"."""

from __future__ import annotations

import re
import time

import pyarrow as pa

from batch_inpaint.job.driver import results
from batch_inpaint.job.report import summary as report
from batch_inpaint.job.report.progress import Progress


def test_progress_rate_is_the_summarys(monkeypatch):
    said: list[str] = []
    started = time.time() - 4.0  # Ray and the workers took 4 s to start
    progress = Progress(12, 3600, said.append, started=started)
    progress.update(12, 1)
    progress.close()
    ended = time.time()
    shown = float(re.search(r"([\d.]+) rows/s", said[-1])[1])
    table = pa.table({"status": ["ok"] * 11 + ["error"], "error_kind": [None] * 11 + ["decode"]})
    summary = results.summarize(table, started, ended, 12)
    assert abs(shown - summary["rows_per_s"]) < 0.05, (said, summary["rows_per_s"])
    assert 2.5 < shown < 3.1  # 12 rows over about 4 s, not over the moments since the bar began


def test_nothing_to_do_is_said_not_a_zero_rate():
    said: list[str] = []
    progress = Progress(0, 10, said.append)
    progress.close()
    assert said == ["progress: nothing to do: every row was finished by an earlier run"]
    summary = {"success": True, "counts": {"ok": 3, "error": 0, "skipped": 0},
               "rows_this_run": 0, "rows_per_s": 0.0, "output": "out"}  # fmt: skip
    text = report.summary_text(summary, None)
    assert "nothing to do" in text and "rows/s" not in text
