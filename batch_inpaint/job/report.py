"""What the user reads at the end: a summary on the terminal and `{output}/report.html`, one
self-contained page (thumbnails inlined) with the run's numbers, a contact sheet of a sample of rows
(input | mask | output) and every error row with its message."""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image

from batch_inpaint.image import codec
from batch_inpaint.job.results import output_rel
from batch_inpaint.storage.uri import join
from batch_inpaint.vocab import DONE, Status

THUMB = 256
MAX_ERRORS_SHOWN = 1000


def summary_text(summary: dict, report_uri: str | None) -> str:
    c = summary.get("counts", {})
    lines = [
        f"batch-inpaint: {'SUCCESS' if summary.get('success') else 'INCOMPLETE'} - "
        f"{c.get('ok', 0)} ok, {c.get('error', 0)} error, {c.get('skipped', 0)} skipped "
        f"({summary.get('rows_this_run', 0)} rows this run, {summary.get('rows_per_s', 0)} rows/s)",
    ]
    if summary.get("errors_by_kind"):
        kinds = ", ".join(f"{k}: {n}" for k, n in summary["errors_by_kind"].items())
        lines.append(f"  errors by kind: {kinds}")
    for p in summary.get("problems", []):
        lines.append(f"  problem: {p}")
    out = summary.get("output", "")
    lines.append(f"  outputs:  {join(out, 'images')}/   metadata: {join(out, 'metadata')}/")
    if summary.get("unknown_objects_kept"):
        lines.append(
            f"  note: {summary['unknown_objects_kept']} object(s) under images/ were not written "
            "by this job; they were left alone"
        )
    if summary.get("rows_of_other_manifests_kept"):
        lines.append(
            f"  note: results of {summary['rows_of_other_manifests_kept']} row(s) not in this "
            "manifest were kept (--prune drops them)"
        )
    if report_uri:
        lines.append(f"  report:   {report_uri}")
    return "\n".join(lines)


def _thumb(rgb: np.ndarray) -> str:
    im = Image.fromarray(rgb)
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def row_pictures(row: dict, storage, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A result row's input, its mask as the job built it (RGB, white = inpainted) and its output,
    decoded the way the job decodes them (EXIF orientation, alpha masks)."""
    from batch_inpaint.image.masks import finish_mask
    from batch_inpaint.job.prepare import build_mask
    from batch_inpaint.storage.uri import manifest_base, resolve

    base = manifest_base(cfg.manifest)
    mask_options = cfg.inpaint_options().mask
    rgb, alpha = codec.decode_image_with_alpha(storage.read_bytes(resolve(row["image"], base)))
    h, w = rgb.shape[:2]
    raw = build_mask(row, (w, h), alpha, storage, base, mask_options)
    hard, _ = finish_mask(raw, mask_options)
    out = codec.decode_image(storage.read_bytes(join(cfg.output, output_rel(row["output"]))))
    return rgb, np.repeat(hard[..., None], 3, axis=2), out


def _row_images(row: dict, storage, cfg) -> tuple[str, str, str]:
    a, m, o = row_pictures(row, storage, cfg)
    return _thumb(a), _thumb(m), _thumb(o)


def render(summary: dict, table: pa.Table, cfg, storage, sample: int) -> str:
    rows = table.to_pylist() if table.num_rows else []
    ok = [r for r in rows if r.get("status") in DONE and r.get("output")]
    errors = [r for r in rows if r.get("status") == Status.ERROR.value]
    cards = []
    for r in ok[:sample]:
        try:
            a, m, o = _row_images(r, storage, cfg)
            cells = (
                f'<img src="{a}" alt="input"><img src="{m}" alt="mask"><img src="{o}" alt="output">'
            )
        except Exception as exc:  # noqa: BLE001 - a thumbnail that can't be made is not fatal
            cells = f"<p>thumbnail unavailable: {html.escape(str(exc))}</p>"
        cards.append(
            f'<div class="card" data-id="{html.escape(str(r["id"]))}"><h3>{html.escape(str(r["id"]))} '
            f'<small>{html.escape(r["status"])}</small></h3><div class="trio">{cells}</div></div>'
        )
    err_rows = "".join(
        f"<tr><td>{html.escape(str(r['id']))}</td><td>{html.escape(str(r.get('error_kind')))}</td>"
        f"<td>{html.escape(str(r.get('error')))}</td></tr>"
        for r in errors[:MAX_ERRORS_SHOWN]
    )
    more = (
        f"<p>... and {len(errors) - MAX_ERRORS_SHOWN} more (see metadata/)</p>"
        if len(errors) > MAX_ERRORS_SHOWN
        else ""
    )
    c = summary.get("counts", {})
    kinds = "".join(
        f"<li>{html.escape(k)}: {n}</li>" for k, n in summary.get("errors_by_kind", {}).items()
    )
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in summary.get("problems", []))
    state = "SUCCESS" if summary.get("success") else "INCOMPLETE"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>batch-inpaint report {html.escape(summary.get("run_id", ""))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} .nums span{{display:inline-block;margin-right:2em;font-size:1.3em}}
.card{{margin:1em 0}} .trio img{{max-width:256px;margin-right:6px;border:1px solid #ccc}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} .SUCCESS{{color:#080}} .INCOMPLETE{{color:#b00}}</style></head>
<body><h1>batch-inpaint report <span class="{state}" id="state">{state}</span></h1>
<p>output: <code>{html.escape(summary.get("output", ""))}</code> · run {html.escape(summary.get("run_id", ""))}</p>
<div class="nums"><span id="n-ok">ok: {c.get("ok", 0)}</span><span id="n-error">error: {c.get("error", 0)}</span>
<span id="n-skipped">skipped: {c.get("skipped", 0)}</span><span>rows/s: {summary.get("rows_per_s", 0)}</span></div>
<h2>Errors by kind</h2><ul id="kinds">{kinds or "<li>none</li>"}</ul>
{f"<h2>Problems</h2><ul>{problems}</ul>" if problems else ""}
<h2>Timings</h2><pre>{html.escape(json.dumps(summary.get("stage_seconds_total", {}), indent=1))}</pre>
<h2>Sample (input | mask | output)</h2><div id="sample">{"".join(cards) or "<p>no finished rows</p>"}</div>
<h2>Error rows</h2><table id="errors"><tr><th>id</th><th>kind</th><th>message</th></tr>{err_rows}</table>{more}
</body></html>"""


def write_report(storage, cfg, table: pa.Table, summary: dict) -> str:
    uri = join(cfg.output, "report.html")
    page = render(summary, table, cfg, storage, cfg.report_sample)
    storage.write_bytes(uri, page.encode("utf-8"))
    return uri
