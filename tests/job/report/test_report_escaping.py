"""report.html escapes everything a run's data puts on the page: markup in ids, prompts, detection
labels, messages, model names, error kinds and carried manifest columns shows as text and never
becomes an element or an attribute (the page is a jinja2 template with autoescape)."""

from __future__ import annotations

import html
import time

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.job.driver import results
from batch_inpaint.job.report import page as report_html
from batch_inpaint.storage.store import Storage
from tests.fixtures_ray import local_dataset
from tests.job.report.test_report import run_stages

SCRIPT = "<script>document.title='owned'</script>"
BREAKOUT = '"><img src=x onerror="document.title=1">'
EVIL = (SCRIPT, BREAKOUT)


def _set(table: pa.Table, name: str, values: list, type_=pa.string()) -> pa.Table:
    col = pa.array(values, type_)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, col)
    return table.append_column(name, col)


def evil_page(tmp_path, payload: str) -> tuple[str, pa.Table]:
    """A real run's result rows (opencv, in process) whose ids, prompt and carried `caption`
    column hold `payload`, then labels, messages, kinds and model names set to it as well."""
    manifest, rows = local_dataset(tmp_path / "in", 4, w=96, h=72, prompt=payload,
                                   caption=payload)  # fmt: skip
    rows[0]["id"] = payload + "-ok"
    rows.append({"id": payload + "-gone", "image": "images/gone.png", "mask": "masks/r000.png",
                 "prompt": payload, "caption": payload})  # fmt: skip
    cfg, table = run_stages(manifest, rows, tmp_path / "out", prompt=payload, mode="crop")
    assert table.column("status").to_pylist().count("error") == 1
    n = table.num_rows
    ok = pc.equal(table.column("status"), "ok").to_pylist()
    # a detection label in verify's note, a second model, an error kind nobody knows
    table = _set(table, "note", [f"verify: '{payload}' at 0.912" if k else None for k in ok])
    table = _set(table, "residual_score", [0.9] * n, pa.float64())
    table = _set(table, "model", [payload if i == 1 else m
                                  for i, m in enumerate(table.column("model").to_pylist())])  # fmt: skip
    table = _set(table, "error_kind", [payload if k else None for k in table.column(
        "error_kind").is_valid().to_pylist()])  # fmt: skip
    table = _set(table, "error", [f"{payload} failed" if k is not None else None
                                  for k in table.column("error").to_pylist()])  # fmt: skip
    summary = results.summarize(table, time.time() - 2, time.time(), n)
    summary.update(run_id=payload, output=cfg.output, success=False, problems=[payload],
                   demo_banner=payload, demo_backend=payload,
                   residuals={"verified": n, "highest": 0.9, "mean": 0.9, "max_residual": 0.5,
                              "over_max_residual": n, "judged_earlier": 0},
                   mask_concerns={payload: 1})  # fmt: skip
    return report_html.render(summary, table, cfg, Storage(), 8), table


def test_markup_in_the_data_never_reaches_the_page_unescaped(tmp_path):
    for k, payload in enumerate(EVIL):
        page, table = evil_page(tmp_path / str(k), payload)
        assert payload not in page and payload.upper() not in page  # the banner is upper case
        assert "<script" not in page.lower()
        # every <img> the page has is a picture of its own (inline data), none from the data
        srcs = [s.split('"', 1)[0] for s in page.split('<img src="')[1:]]
        assert srcs and all(s.startswith("data:image/") for s in srcs), srcs[:3]
        assert 'onerror="' not in page and "<img src=x" not in page
        # and the data is on the page, as text: escaped, not dropped
        shown = html.escape(payload, quote=True).replace("&#x27;", "&#39;").replace(
            "&quot;", "&#34;")  # fmt: skip
        for where in (f"{shown}-ok", f"{shown}-gone", f"{shown} failed",  # ids, messages
                      f"&#39;{shown}&#39; at 0.912",  # a detection label
                      f"data-kind=\"{shown}\""):  # an error kind, inside an attribute  # fmt: skip
            assert where in page, where
        assert page.count(shown) >= 10
        assert table.column("caption").to_pylist()[0] == payload  # carried to the result rows
