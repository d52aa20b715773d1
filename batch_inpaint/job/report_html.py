"""report.html: one self-contained page (thumbnails inlined, charts as inline SVG, no network) that
explains a run at a glance. In reading order: what ran (backend, model, revision, the settings that
decide the pixels), whether it is complete, the errors grouped by kind with pictures of their
inputs, the stage timings and throughput, and a sample of rows drawn across statuses.

Its size does not grow with the run: error rows listed, pictures and the sample are capped, and
the numbers come from whole-column Arrow/numpy operations."""

from __future__ import annotations

import html

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.job import report_charts as charts
from batch_inpaint.job.report_pictures import (
    error_pictures,
    full_size,
    row_pictures,
    sample_indices,
    shown_errors,
    thumb,
    without,
)
from batch_inpaint.vocab import DONE, ErrorKind, Status

MAX_ERRORS_SHOWN = 500  # error rows listed, all kinds together
MAX_ERRORS_PER_KIND = 100
PICTURES_PER_KIND = 3
MESSAGE_CHARS = 400
KIND_NOTES = {k.value: k.description for k in ErrorKind}  # vocab.ErrorKind's, as run.json
RESIDUALS_SHOWN = 8  # rows of the "highest residuals" section
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2327;background:#f6f7f8}
main{max-width:1120px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:1.5em;margin:0 0 4px} h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:1em;margin:16px 0 6px} .muted{color:#667} code{font-size:.92em}
.banner{background:#c00;color:#fff;font-weight:bold;font-size:1.2rem;padding:.6rem 1rem;margin:0 0 1rem}
.badge{display:inline-block;padding:3px 12px;border-radius:14px;color:#fff;font-size:.8em;vertical-align:middle;margin-left:8px}
.b-complete{background:#1e8e3e} .b-errors{background:#d08a00} .b-incomplete{background:#c5221f}
.panel{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:12px 16px;margin:10px 0}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px 18px;margin:0}
.facts div{min-width:0} .facts dt{font-size:.75em;color:#667;text-transform:uppercase;letter-spacing:.03em}
.facts dd{margin:0;font-weight:600;overflow-wrap:anywhere}
.nums{display:flex;flex-wrap:wrap;gap:10px} .nums span{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:8px 14px;font-size:1.1em}
.problems{border-color:#f1b0ad;background:#fdf0ef}
table{border-collapse:collapse;background:#fff;width:100%} td,th{border:1px solid #e1e4e8;padding:4px 8px;text-align:left;vertical-align:top;font-size:.92em;overflow-wrap:break-word}
.scroll{overflow-x:auto;max-width:100%}
table.num td{text-align:right} .kind{margin:14px 0} .tag{font-size:.75em;border-radius:10px;padding:1px 8px;margin-left:6px;background:#fff3cd;color:#7a5800;border:1px solid #e6c96a}
.figs{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0} figure{margin:0;background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:6px;max-width:100%}
figure img{height:128px;max-width:100%;margin-right:4px;border:1px solid #ddd;background:#eee} figcaption{font-size:.8em;color:#445;max-width:380px;overflow-wrap:anywhere}
#sample,.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(330px,100%),1fr));gap:12px}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:8px}
.card h3{margin:0 0 6px;font-size:.9em;overflow-wrap:anywhere} .trio{display:flex;gap:4px}
.trio img{flex:0 1 calc((100% - 8px) / 3);min-width:0;height:auto;border:1px solid #ddd;background:#eee}
.resid{margin:6px 0 0;font-size:.85em} .st-ok{color:#1e8e3e} .st-skipped{color:#667} .st-error{color:#c5221f}
svg{max-width:100%;height:auto} svg .lbl{font-size:11px;fill:#445}
"""


def e(value) -> str:
    return html.escape("" if value is None else str(value))


def render(summary: dict, table: pa.Table, cfg, storage, sample: int) -> str:
    c = summary.get("counts", {})
    n_err = c.get(Status.ERROR.value, 0)
    if not summary.get("success"):
        failed = (summary.get("error_rate") or {}).get("exceeded")  # most rows: a wrong setting
        state, cls = ("failed: too many errors" if failed else "incomplete"), "incomplete"
    elif n_err:
        state, cls = f"complete, {n_err:,} error{'s' if n_err != 1 else ''}", "errors"
    else:
        state, cls = "complete", "complete"
    run_id = summary.get("run_id", "")
    problems = "".join(f"<li>{e(p)}</li>" for p in summary.get("problems", []))
    rates, span = charts.throughput(table, charts.run_start(run_id))
    errors, shown = _errors(table, summary, cfg, storage)
    parts = [
        _banner(summary, table, cfg),
        f'<header><h1>batch-inpaint report <span id="state" class="badge b-{cls}">{e(state)}</span>'
        f'</h1><p class="muted">output <code>{e(summary.get("output", ""))}</code> · run '
        f"{e(run_id)}</p></header>",
        _facts(summary, table, cfg),
        f'<div class="nums"><span id="n-ok">ok: {c.get("ok", 0):,}</span>'
        f'<span id="n-error">error: {n_err:,}</span>'
        f'<span id="n-skipped">skipped: {c.get("skipped", 0):,}</span>'
        f"{_residual_count(summary)}"
        f"{_mask_count(summary)}"
        f"<span>rows: {summary.get('rows', table.num_rows):,}</span></div>",
        f'<div class="panel problems" id="problems"><b>Why this run is incomplete</b><ul>'
        f"{problems}</ul></div>"
        if problems
        else "",
        errors,
        _residuals(table, summary, cfg, storage),
        "<h2>Timings</h2>",
        f'<div class="scroll">{charts.timings_table(charts.stage_stats(table))}</div>',
        "<h3>Throughput over this run</h3>",
        charts.throughput_svg(rates, span),
        _sample(without(table, shown), cfg, storage, sample, run_id),
    ]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>batch-inpaint report {e(run_id)}</title><style>{CSS}</style></head><body><main>"
        + "".join(parts)
        + "</main></body></html>"
    )


def _models(table: pa.Table, cfg) -> list[tuple[str, str, str, int]]:
    """(backend, model, revision, rows) as the result rows name them; the config's when none do."""
    cols = ["backend", "model", "revision"]
    if table.num_rows and all(n in table.column_names for n in cols):
        named = table.filter(pc.is_valid(table.column("backend")))
        if named.num_rows:
            g = named.select([*cols, "id"]).group_by(cols).aggregate([("id", "count")])
            rows = g.sort_by([("id_count", "descending")]).to_pylist()
            return [(r["backend"], r["model"], r["revision"], r["id_count"]) for r in rows]
    return [(cfg.backend, cfg.model or "(the backend's default)", cfg.revision, 0)]


RANDOM_WEIGHTS = "random weights: noise expected"


def _banner(summary: dict, table: pa.Table, cfg) -> str:
    """The tiny random checkpoint's outputs are noise by design: never shown without saying so.
    A demo also says which backend it chose and why."""
    text = summary.get("demo_banner") or (
        RANDOM_WEIGHTS if _models(table, cfg)[0][0] == "tiny" else None
    )
    lines = []
    if text:
        lines.append(f'<p id="banner" class="banner">{e(text.upper())}</p>')
    if summary.get("demo_backend"):
        lines.append(f'<p id="demo-backend" class="muted">demo: {e(summary["demo_backend"])}</p>')
    return "".join(lines)


def _facts(summary: dict, table: pa.Table, cfg) -> str:
    models = _models(table, cfg)
    backend, model, revision, _ = models[0]
    opts = cfg.inpaint_options()
    g, geo = opts.generation, opts.geometry
    unused = backend in ("opencv", "lama")  # classical fills: no steps, guidance or prompt
    size = (f"max_side {geo.max_side}" if geo.mode == "full"
            else f"crop_size {geo.crop_size or 'native'}")  # fmt: skip
    wall = float(summary.get("wall_s") or 0.0)
    facts = [
        ("backend", backend), ("model", model), ("revision", revision or "none (unpinned)"),
        ("mode", f"{geo.mode}, {size}"),
        ("steps", f"not used by {backend}" if unused else g.num_inference_steps),
        ("guidance", f"not used by {backend}" if unused else g.guidance_scale),
        ("output format", cfg.output_format),
        ("wall time", charts._secs(wall) if wall else "–"),
        ("rows this run", f"{summary.get('rows_this_run', 0):,}"),
        ("rows/s", summary.get("rows_per_s", 0)),
    ]  # fmt: skip
    cells = "".join(f'<div><dt>{e(k)}</dt><dd id="f-{k.replace(" ", "-").replace("/", "")}">'
                    f"{e(v)}</dd></div>" for k, v in facts)  # fmt: skip
    mixed = ""
    if len(models) > 1:
        shown = "; ".join(f"{b} {m} {r or ''} ({n:,} rows)".replace("  ", " ")
                          for b, m, r, n in models[:5])  # fmt: skip
        mixed = f'<p class="muted">rows were made by {len(models)} models: {e(shown)}</p>'
    from batch_inpaint.job.report_command import command_line
    from batch_inpaint.storage.uri import redact_uri

    ran = (f'<p class="muted">manifest <code id="manifest">{e(redact_uri(cfg.manifest))}</code>; '
           f'to run it again: <code id="command">{e(command_line(cfg))}</code></p>')  # fmt: skip
    return f'<section class="panel"><dl class="facts">{cells}</dl>{mixed}{ran}</section>'


def _errors(table: pa.Table, summary: dict, cfg, storage) -> tuple[str, pa.Array]:
    none = pa.array([], pa.string())
    if not table.num_rows:
        return "", none
    errors, counts, shown = shown_errors(table, MAX_ERRORS_PER_KIND, MAX_ERRORS_SHOWN)
    if not errors.num_rows:
        return '<h2>Errors</h2><p id="no-errors">No row failed.</p>', none
    from batch_inpaint.vocab import TRANSIENT_KINDS

    kinds = pc.fill_null(errors.column("error_kind"), "unknown")
    chart = charts.kinds_svg([(k, n, k in TRANSIENT_KINDS) for k, n in counts])
    out = [f"<h2>Errors ({errors.num_rows:,})</h2>", chart]
    budget = MAX_ERRORS_SHOWN
    for kind, n in counts:
        take = min(n, MAX_ERRORS_PER_KIND, budget)
        budget -= take
        idx = pc.indices_nonzero(pc.equal(kinds, kind)).slice(0, take)
        rows = errors.take(idx).to_pylist()
        tag = '<span class="tag">transient: redone by the next run</span>' if kind in TRANSIENT_KINDS else ""  # fmt: skip
        note = KIND_NOTES.get(kind, "")
        figs = [_error_figure(r, cfg, storage) for r in rows[:PICTURES_PER_KIND]]
        trs = "".join(
            f"<tr><td>{e(r['id'])}</td><td>{e(_clip(r.get('error')))}</td>"
            f"<td>{e(r.get('image'))}</td></tr>"
            for r in rows
        )
        more = (f'<p class="more">... and {n - take:,} more {e(kind)} rows (see metadata/)</p>'
                if n > take else "")  # fmt: skip
        out.append(
            f'<div class="kind" data-kind="{e(kind)}"><h3>{e(kind)} — {n:,} '
            f"row{'s' if n != 1 else ''}{tag}</h3>"
            f'<p class="muted">{e(note)}</p><div class="figs">{"".join(figs)}</div>'
            f'<div class="scroll"><table class="errors"><tr><th>id</th><th>message</th>'
            f"<th>image</th></tr>{trs}</table></div>{more}</div>"
        )
    return "".join(out), shown


def _clip(text) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def _error_figure(row: dict, cfg, storage) -> str:
    pictures, note = error_pictures(row, storage, cfg)
    imgs = "".join(f'<img src="{src}" alt="{alt}">' for alt, src in pictures)
    caption = e(row["id"]) + (f"<br>{e(note)}" if note else "")
    return f'<figure class="err">{imgs}<figcaption>{caption}</figcaption></figure>'


def _sample(table: pa.Table, cfg, storage, n: int, run_id: str) -> str:
    idx = sample_indices(table, n, run_id or "report")
    if not idx:
        return '<h2>Sample</h2><div id="sample"><p>no rows</p></div>'
    rows = table.take(pa.array(idx, pa.int64())).to_pylist()
    by = {s: sum(r["status"] == s for r in rows) for s in (Status.OK.value, Status.SKIPPED.value,
                                                            Status.ERROR.value)}  # fmt: skip
    made = ", ".join(f"{k} {s}" for s, k in by.items() if k)
    cards = "".join(_card(r, cfg, storage) for r in rows)
    return (
        f'<h2>Sample <small class="muted">{len(rows)} of {table.num_rows:,} rows: {made}; '
        f'input | mask | output</small></h2><div id="sample">{cards}</div>'
    )


def _residuals(table: pa.Table, summary: dict, cfg, storage) -> str:
    """The verified rows with the highest residual_score, input | mask | output."""
    from batch_inpaint.job.residuals import residual_text

    if "residual_score" not in table.column_names or not summary.get("residuals"):
        return ""
    r = summary["residuals"]
    scores = table.column("residual_score")
    order = pc.sort_indices(scores, sort_keys=[("", "descending")])  # nulls last
    top = table.take(order.slice(0, min(RESIDUALS_SHOWN, len(scores) - scores.null_count)))
    cards = "".join(_card(row, cfg, storage, _residual_line(row)) for row in top.to_pylist())
    return (
        f'<h2>Highest residuals <small class="muted">what verify still found inside the mask'
        f"; input | mask | output</small></h2>"
        f'<p id="residual-summary">{e(residual_text(r))}</p><div id="residuals" class="grid">'
        f"{cards}</div>"
    )


def _residual_count(summary: dict) -> str:
    r = summary.get("residuals") or {}
    if r.get("max_residual") is None:
        return ""
    return (f'<span id="n-residual">above max_residual {r["max_residual"]:g}: '
            f'{r.get("over_max_residual", 0):,}</span>')  # fmt: skip


def _mask_count(summary: dict) -> str:
    """Rows whose mask looks wrong (empty, covering most of the image, grey, resized): each
    row's note says why (docs/masks.md)."""
    found = summary.get("mask_concerns") or {}
    if not found:
        return ""
    kinds = ", ".join(f"{k} {n:,}" for k, n in found.items())
    return (f'<span id="n-suspicious" title="each row\'s note says why">suspicious masks: '
            f"{sum(found.values()):,} ({e(kinds)})</span>")  # fmt: skip


def _linked(img: str, href: str | None) -> str:
    return f'<a href="{e(href)}" target="_blank">{img}</a>' if href else img


def _residual_line(row: dict) -> str:
    """'watermark' at 0.812 (the note verify wrote), the score alone when there is none."""
    note = row.get("note") or ""
    found = note.rsplit("verify: ", 1)[-1] if "verify: " in note else None
    text = found or f"residual {row['residual_score']:.3f}"
    if row.get("error_kind") == "residual":
        text += " (above max_residual: error)"
    return f'<p class="resid">{e(text)}</p>'


def _card(row: dict, cfg, storage, extra: str = "") -> str:
    status = row.get("status")
    if row.get("output") and (status in DONE or row.get("error_kind") == "residual"):
        try:
            a, m, o = (thumb(x) for x in row_pictures(row, storage, cfg))
            cells = "".join(_linked(f'<img src="{src}" alt="{alt}">', href)
                            for src, alt, href in zip((a, m, o), ("input", "mask", "output"),
                                                      full_size(row), strict=True))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a thumbnail that can't be made is not fatal
            cells = f"<p>thumbnail unavailable: {e(exc)}</p>"
    else:
        pictures, note = error_pictures(row, storage, cfg)
        cells = "".join(f'<img src="{src}" alt="{alt}">' for alt, src in pictures)
        why = f"no output: {e(row.get('error_kind'))}" + (f"; {e(note)}" if note else "")
        cells += f'</div><p class="muted">{why}</p><div>'  # the note below the pictures
    return (
        f'<div class="card" data-id="{e(row["id"])}" data-status="{e(status)}"><h3>'
        f'{e(row["id"])} <small class="st-{e(status)}">{e(status)}</small></h3>'
        f'<div class="trio">{cells}</div>{extra}</div>'
    )
