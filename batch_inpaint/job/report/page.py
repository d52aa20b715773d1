"""report.html: one self-contained page (thumbnails inlined, charts as inline SVG, no network) that
explains a run at a glance. In reading order: what ran (backend, model, revision, the settings that
decide the pixels), whether it is complete, the errors grouped by kind with pictures of their
inputs, the stage timings and throughput, and a sample of rows drawn across statuses.

The page is the jinja2 template job/report/templates/report.html with autoescape on: this module only
gathers values, so no id, prompt, label, message or carried column reaches the page unescaped.
Its CSS is job/report/static/report.css, inlined so the page stays one file.

Its size does not grow with the run: error rows listed, pictures and the sample are capped, and
the numbers come from whole-column Arrow/numpy operations."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from markupsafe import Markup

from batch_inpaint.job.report import charts
from batch_inpaint.job.report.pictures import (
    error_pictures,
    full_size,
    row_pictures,
    sample_indices,
    shown_errors,
    thumb,
    without,
)
from batch_inpaint.storage.uri import manifest_base
from batch_inpaint.vocab import DONE, ErrorKind, Status

MAX_ERRORS_SHOWN = 500  # error rows listed, all kinds together
MAX_ERRORS_PER_KIND = 100
PICTURES_PER_KIND = 3
MESSAGE_CHARS = 400
KIND_NOTES = {k.value: k.description for k in ErrorKind}  # vocab.ErrorKind's, as run.json
RESIDUALS_SHOWN = 8  # rows of the "highest residuals" section
HERE = Path(__file__).resolve().parent


@cache
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        finalize=lambda v: "" if v is None else v,  # a missing value shows as nothing
        undefined=jinja2.StrictUndefined,
    )
    env.filters["n"] = lambda v: f"{v:,}"
    return env.get_template("report.html")


@cache
def _css() -> Markup:
    return Markup((HERE / "static" / "report.css").read_text(encoding="utf-8"))


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
    rates, span = charts.throughput(table, charts.run_start(run_id))
    errors, shown = _errors(table, cfg, storage)
    banner = summary.get("demo_banner") or (
        RANDOM_WEIGHTS if _models(table, cfg)[0][0] == "tiny" else None
    )  # the tiny random checkpoint's outputs are noise by design: never shown without saying so
    counts = {"ok": c.get("ok", 0), "error": n_err, "skipped": c.get("skipped", 0),
              "rows": summary.get("rows", table.num_rows)}  # fmt: skip
    return _template().render(
        css=_css(),
        run_id=run_id,
        output=summary.get("output", ""),
        state=state,
        state_class=cls,
        banner=banner.upper() if banner else None,
        demo_backend=summary.get("demo_backend"),
        **_facts(summary, table, cfg),
        counts=counts,
        residual_count=_residual_count(summary),
        masks=_mask_count(summary),
        problems=summary.get("problems", []),
        errors=errors,
        residuals=_residuals(table, summary, cfg, storage),
        timings=Markup(charts.timings_table(charts.stage_stats(table))),
        throughput=Markup(charts.throughput_svg(rates, span)),
        sample=_sample(without(table, shown), cfg, storage, sample, run_id),
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


def _facts(summary: dict, table: pa.Table, cfg) -> dict:
    from batch_inpaint.job.report.command import command_line
    from batch_inpaint.storage.uri import redact_uri

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
        ("output format", cfg.image_format if cfg.output_format in ("files", "auto")
                          else f"{cfg.output_format} shards, {cfg.image_format}"),  # fmt: skip
        ("wall time", charts._secs(wall) if wall else "–"),
        ("rows this run", f"{summary.get('rows_this_run', 0):,}"),
        ("rows/s", summary.get("rows_per_s", 0)),
    ]  # fmt: skip
    mixed = None
    if len(models) > 1:
        shown = "; ".join(f"{b} {m} {r or ''} ({n:,} rows)".replace("  ", " ")
                          for b, m, r, n in models[:5])  # fmt: skip
        mixed = (len(models), shown)
    return {"facts": facts, "mixed": mixed, "manifest": redact_uri(cfg.manifest),
            "command": command_line(cfg)}  # fmt: skip


def _errors(table: pa.Table, cfg, storage) -> tuple[dict | None, pa.Array]:
    """The Errors section: None without rows; kinds [] when no row failed."""
    none = pa.array([], pa.string())
    if not table.num_rows:
        return None, none
    errors, counts, shown = shown_errors(table, MAX_ERRORS_PER_KIND, MAX_ERRORS_SHOWN)
    if not errors.num_rows:
        return {"kinds": []}, none
    from batch_inpaint.vocab import TRANSIENT_KINDS

    kinds = pc.fill_null(errors.column("error_kind"), "unknown")
    chart = charts.kinds_svg([(k, n, k in TRANSIENT_KINDS) for k, n in counts])
    out = []
    budget = MAX_ERRORS_SHOWN
    for kind, n in counts:
        take = min(n, MAX_ERRORS_PER_KIND, budget)
        budget -= take
        idx = pc.indices_nonzero(pc.equal(kinds, kind)).slice(0, take)
        rows = errors.take(idx).to_pylist()
        out.append({
            "kind": kind, "n": n, "transient": kind in TRANSIENT_KINDS,
            "note": KIND_NOTES.get(kind, ""), "more": n - take,
            "figures": [_error_figure(r, cfg, storage) for r in rows[:PICTURES_PER_KIND]],
            "rows": [{"id": r["id"], "error": _clip(r.get("error")), "image": r.get("image")}
                     for r in rows],
        })  # fmt: skip
    return {"rows": errors.num_rows, "chart": Markup(chart), "kinds": out}, shown


def _clip(text) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def _error_figure(row: dict, cfg, storage) -> dict:
    pictures, note = error_pictures(row, storage, cfg)
    return {"pictures": pictures, "id": row["id"], "note": note}


def _sample(table: pa.Table, cfg, storage, n: int, run_id: str) -> dict | None:
    idx = sample_indices(table, n, run_id or "report")
    if not idx:
        return None
    rows = table.take(pa.array(idx, pa.int64())).to_pylist()
    by = {s: sum(r["status"] == s for r in rows) for s in (Status.OK.value, Status.SKIPPED.value,
                                                            Status.ERROR.value)}  # fmt: skip
    made = ", ".join(f"{k} {s}" for s, k in by.items() if k)
    return {"shown": len(rows), "total": table.num_rows, "made": made,
            "cards": [_card(r, cfg, storage) for r in rows]}  # fmt: skip


def _residuals(table: pa.Table, summary: dict, cfg, storage) -> dict | None:
    """The verified rows with the highest residual_score, input | mask | output."""
    from batch_inpaint.job.report.residuals import residual_text

    if "residual_score" not in table.column_names or not summary.get("residuals"):
        return None
    scores = table.column("residual_score")
    order = pc.sort_indices(scores, sort_keys=[("", "descending")])  # nulls last
    top = table.take(order.slice(0, min(RESIDUALS_SHOWN, len(scores) - scores.null_count)))
    cards = [_card(row, cfg, storage, _residual_line(row)) for row in top.to_pylist()]
    return {"text": residual_text(summary["residuals"]), "cards": cards}


def _residual_count(summary: dict) -> tuple[str, int] | None:
    r = summary.get("residuals") or {}
    if r.get("max_residual") is None:
        return None
    return f"{r['max_residual']:g}", r.get("over_max_residual", 0)


def _mask_count(summary: dict) -> tuple[int, str] | None:
    """Rows whose mask looks wrong (empty, covering most of the image, grey, resized): each
    row's note says why (docs/masks.md)."""
    found = summary.get("mask_concerns") or {}
    if not found:
        return None
    return sum(found.values()), ", ".join(f"{k} {n:,}" for k, n in found.items())


def _residual_line(row: dict) -> str:
    """'watermark' at 0.812 (the note verify wrote), the score alone when there is none."""
    note = row.get("note") or ""
    found = note.rsplit("verify: ", 1)[-1] if "verify: " in note else None
    text = found or f"residual {row['residual_score']:.3f}"
    if row.get("error_kind") == "residual":
        text += " (above max_residual: error)"
    return text


def _card(row: dict, cfg, storage, extra: str | None = None) -> dict:
    """A row's card: input | mask | output (linked to full size) when it has an output, else the
    pictures its inputs give and why there is no output."""
    status = row.get("status")
    card = {"id": row["id"], "status": status, "extra": extra, "trio": None, "thumb_error": None,
            "pictures": [], "error_kind": row.get("error_kind"), "note": None}  # fmt: skip
    if row.get("output") and (status in DONE or row.get("error_kind") == "residual"):
        try:
            a, m, o = (thumb(x) for x in row_pictures(row, storage, cfg))
            card["trio"] = list(zip((a, m, o), ("input", "mask", "output"), full_size(row, manifest_base(cfg.manifest)),
                                    strict=True))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a thumbnail that can't be made is not fatal
            card["thumb_error"] = str(exc)
    else:
        card["pictures"], card["note"] = error_pictures(row, storage, cfg)
    return card
