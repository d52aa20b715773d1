"""The numbers and small charts of report.html, computed with Arrow and numpy over whole columns
(a million result rows cost milliseconds, never a Python object per row) and drawn as inline SVG
by hand, so the page needs no network and no plotting library."""

from __future__ import annotations

import datetime as dt
import html

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STAGES = (("detect_s", "detect (fetch, decode, detect)"),
          ("prepare_s", "prepare (fetch, decode, mask, plan)"), ("model_s", "model"),
          ("write_s", "write (paste, encode, store)"),
          ("verify_s", "verify (read the output, detect again)"))  # fmt: skip
ONLY_WITH_ROWS = ("detect_s", "verify_s")  # a job without detection or verify leaves them out
W, H, PAD = 640, 150, 36  # throughput chart size and left/bottom margin, px


def run_start(run_id: str | None) -> float | None:
    """A run id starts with its UTC start time (results.new_run_id: 20260101T120000-abc123)."""
    try:
        t = dt.datetime.strptime((run_id or "")[:15], "%Y%m%dT%H%M%S")
    except ValueError:
        return None
    return t.replace(tzinfo=dt.timezone.utc).timestamp()


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.empty(0)
    col = pc.drop_null(pc.cast(table.column(name), pa.float64()))
    return col.to_numpy(zero_copy_only=False) if len(col) else np.empty(0)


def stage_stats(table: pa.Table) -> list[dict]:
    """Per stage: rows timed, mean, p50, p95 and total seconds (rows without a time left out)."""
    out = []
    for name, label in STAGES:
        v = _floats(table, name)
        if not len(v) and name in ONLY_WITH_ROWS:
            continue
        if not len(v):
            out.append({"stage": name, "label": label, "rows": 0})
            continue
        p50, p95 = np.percentile(v, [50, 95])
        out.append({"stage": name, "label": label, "rows": int(len(v)), "mean": float(v.mean()),
                    "p50": float(p50), "p95": float(p95), "total": float(v.sum())})  # fmt: skip
    return out


def timings_table(stats: list[dict]) -> str:
    head = "<tr><th>stage</th><th>rows</th><th>mean</th><th>p50</th><th>p95</th><th>total</th></tr>"
    body = []
    for s in stats:
        if not s["rows"]:
            cells = '<td colspan="5">no timed rows</td>'
        else:
            cells = f"<td>{s['rows']:,}</td>" + "".join(
                f"<td>{_secs(s[k])}</td>" for k in ("mean", "p50", "p95", "total")
            )
        body.append(f"<tr><th>{html.escape(s['label'])}</th>{cells}</tr>")
    return f'<table id="timings" class="num">{head}{"".join(body)}</table>'


def _secs(v: float) -> str:
    if v >= 3600:
        return f"{v / 3600:.1f} h"
    if v >= 60:
        return f"{v / 60:.1f} min"
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def throughput(table: pa.Table, start: float | None, bins: int = 40) -> tuple[np.ndarray, float]:
    """Rows finished per second in `bins` equal slices of this run (rows finished before `start`
    belong to earlier runs), and the run's span in seconds."""
    if "finished_at" not in table.column_names or not table.num_rows:
        return np.zeros(0), 0.0
    col = pc.drop_null(table.column("finished_at"))
    if not len(col):
        return np.zeros(0), 0.0
    t = pc.cast(pc.cast(col, pa.timestamp("ms", tz="UTC")), pa.int64()).to_numpy() / 1000.0
    t0 = start if start is not None else float(t.min())
    t = t[t >= t0 - 1.0]
    if not len(t):
        return np.zeros(0), 0.0
    span = max(float(t.max()) - t0, 1e-3)
    counts, _ = np.histogram(t, bins=bins, range=(t0, t0 + span))
    return counts / (span / bins), span


def throughput_svg(rates: np.ndarray, span: float) -> str:
    if not len(rates) or not rates.any():
        return '<p class="muted">no rows finished in this run</p>'
    top = float(rates.max())
    pw, ph = W - PAD - 8, H - PAD + 8 - 12
    n = len(rates)
    pts = [(PAD, 12 + ph)]
    for i, r in enumerate(rates):  # a step line: each slice's rate held across its width
        y = 12 + ph - r / top * ph
        pts += [(PAD + i * pw / n, y), (PAD + (i + 1) * pw / n, y)]
    pts.append((PAD + pw, 12 + ph))
    poly = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    mean = float(rates.mean())
    first = int(np.flatnonzero(rates)[0])  # slices before it: start-up (Ray, model load)
    ym = 12 + ph - mean / top * ph
    return (
        f'<svg id="throughput" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="rows per second over the run">'
        f'<polygon points="{poly}" fill="#cfe3f7" stroke="#2a6fb0" stroke-width="1.5"/>'
        f'<line x1="{PAD}" y1="{ym:.1f}" x2="{PAD + pw}" y2="{ym:.1f}" stroke="#555" '
        f'stroke-dasharray="4 3"/>'
        f'<text x="{PAD + 4}" y="34" class="lbl">- - mean {_rate(mean)} rows/s</text>'
        f'<line x1="{PAD}" y1="12" x2="{PAD}" y2="{12 + ph}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{12 + ph}" x2="{PAD + pw}" y2="{12 + ph}" stroke="#999"/>'
        f'<text x="{PAD + 4}" y="20" class="lbl">{_rate(top)} rows/s</text>'
        f'<text x="{PAD - 4}" y="{12 + ph}" text-anchor="end" class="lbl">0</text>'
        f'<text x="{PAD}" y="{H - 6}" class="lbl">0 s</text>'
        f'<text x="{PAD + pw}" y="{H - 6}" text-anchor="end" class="lbl">{_secs(span)}</text>'
        f'<text x="{PAD + pw / 2}" y="{H - 6}" text-anchor="middle" class="lbl">time since the '
        f"run started (first row after {_secs(first * span / n)})</text></svg>"
    )


def kinds_svg(kinds: list[tuple[str, int, bool]]) -> str:
    """Horizontal bars, one per error kind (count; transient kinds in amber)."""
    if not kinds:
        return ""
    row_h, label_w, bar_w = 22, 170, 380
    top = max(n for _, n, _ in kinds)
    h = row_h * len(kinds) + 4
    bars = []
    for i, (kind, n, transient) in enumerate(kinds):
        y = 2 + i * row_h
        w = max(2.0, n / top * bar_w)
        color = "#e0a400" if transient else "#c0392b"
        bars.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" class="lbl">'
            f"{html.escape(kind)}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 7}" fill="{color}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" class="lbl">{n:,}</text>'
        )
    width = label_w + bar_w + 70
    return (
        f'<svg id="kinds-chart" viewBox="0 0 {width} {h}" width="{width}" height="{h}" '
        f'role="img" aria-label="error rows by kind">{"".join(bars)}</svg>'
    )
