"""What verify found, summed up once: for run.json (residual_summary), and one line of text for
the terminal's summary and the report page (residual_text)."""

from __future__ import annotations

import pyarrow as pa


def residual_summary(table: pa.Table, max_residual: float | None) -> dict | None:
    """What verify found, for run.json: rows verified, their highest and mean residual_score,
    the rows whose score is over this run's max_residual, and `judged_earlier`: residual error
    rows an earlier run judged against a lower limit (finished work: only --retry-errors redoes
    and judges them again). None when no row was verified."""
    import pyarrow.compute as pc

    from batch_inpaint.vocab import ErrorKind

    if "residual_score" not in table.column_names:
        return None
    scores = table.column("residual_score")
    verified = len(scores) - scores.null_count
    if not verified:
        return None
    residual = pc.fill_null(pc.equal(table.column("error_kind"), ErrorKind.RESIDUAL.value), False)
    over = 0
    if max_residual is not None:
        over = pc.sum(pc.fill_null(pc.greater(scores, max_residual), False)).as_py() or 0
        above = pc.fill_null(pc.greater(scores, max_residual), False)
        residual = pc.and_(residual, pc.invert(above))
    return {
        "verified": verified,
        "highest": round(pc.max(scores).as_py(), 6),
        "mean": round(pc.mean(scores).as_py(), 6),
        "max_residual": max_residual,
        "over_max_residual": over,
        "judged_earlier": pc.sum(residual).as_py() or 0,
    }


def residual_text(r: dict) -> str:
    high, limit = r["highest"], r.get("max_residual")
    shown = f"{high:.3f}"
    if limit is not None and (float(shown) > limit) != (high > limit):
        shown = f"{high:.6g}"  # 3 digits would cross the limit: 1.000 beside "0 above 0.9999"
    text = (f"{r['verified']:,} row(s) verified, highest residual {shown}, "
            f"mean {r['mean']:.3f}")  # fmt: skip
    if r.get("max_residual") is not None:
        text += f"; {r['over_max_residual']:,} above max_residual {r['max_residual']:g}"
    if r.get("judged_earlier"):
        text += (f"; {r['judged_earlier']:,} residual error row(s) were judged against an "
                 "earlier, lower limit: --retry-errors redoes and judges them again")  # fmt: skip
    return text
