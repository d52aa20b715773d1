"""`batch-inpaint results --output O [--status error] [--kind K] [--columns id,error]
[--format table|csv|json]`: the result rows a user asks about, without pandas: the latest row per
id of a run's output (local or object storage), filtered and printed."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from batch_inpaint.vocab import FINAL, ExitCode

DEFAULT_COLUMNS = ("id", "status", "error_kind", "error", "output", "note")
FORMATS = ("table", "csv", "json")
TABLE_LIMIT = 50  # rows a table shows unless --limit


def add_parser(sub) -> None:
    from batch_inpaint.cli.flags import examples
    from batch_inpaint.cli.manifest import add_storage_flags

    p = sub.add_parser(
        "results",
        help="list a run's result rows: errors, skipped rows, any column",
        description=__doc__.split(":", 1)[1].strip(),
        **examples(
            "batch-inpaint results --output out/ --status error",
            "batch-inpaint results --output out/ --kind not_found --columns id,image,error",
            "batch-inpaint results --output s3://bucket/cleaned/ --format csv > results.csv",
        ),
    )
    p.add_argument("--output", required=True, help="the output of a `run` (local folder or URI)")
    p.add_argument("--status", choices=FINAL, help="only rows with this status")
    p.add_argument("--kind", metavar="KIND",
                   help="only error rows of this error_kind (e.g. not_found, decode, model)")  # fmt: skip
    p.add_argument("--id", dest="ids", action="append", metavar="ID",
                   help="only this row id (repeatable)")  # fmt: skip
    p.add_argument("--columns", metavar="A,B",
                   help=f"columns to show, comma-separated; 'all' for every column "
                   f"(default: {','.join(DEFAULT_COLUMNS)})")  # fmt: skip
    p.add_argument("--format", default="table", choices=FORMATS,
                   help="table (aligned, long cells cut), csv or json (one object per line); "
                   "default: %(default)s")  # fmt: skip
    p.add_argument("--limit", type=int, metavar="N",
                   help=f"at most N rows (default: {TABLE_LIMIT} for a table, all for csv and "
                   "json)")  # fmt: skip
    add_storage_flags(p)
    p.set_defaults(func=_results)


def select(table: Any, status: str | None = None, kind: str | None = None,
           ids: list[str] | None = None) -> Any:  # fmt: skip
    """The rows of a results table with this status, error kind and ids (None: any)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pa.array([True] * table.num_rows, pa.bool_())
    if status:
        keep = pc.and_(keep, pc.fill_null(pc.equal(table.column("status"), status), False))
    if kind:
        keep = pc.and_(keep, pc.fill_null(pc.equal(table.column("error_kind"), kind), False))
    if ids:
        keep = pc.and_(keep, pc.is_in(table.column("id"), value_set=pa.array(ids, pa.string())))
    return table.filter(keep)


def _results(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from batch_inpaint.errors import ConfigError
    from batch_inpaint.job.driver import results
    from batch_inpaint.job.report.summary import load_job, lock_holder
    from batch_inpaint.manifest.schema import RESULT_SCHEMA

    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {args.limit}")
    cfg, storage = _storage(args, load_job)
    table, _ = results.read_results(storage, args.output)
    table = table if table is not None else RESULT_SCHEMA.empty_table()
    if args.kind and args.kind not in set(table.column("error_kind").to_pylist()):
        known = sorted({k for k in table.column("error_kind").to_pylist() if k})
        print(f"results: no row has error_kind {args.kind!r} (kinds here: "
              f"{', '.join(known) or 'none'})", file=sys.stderr)  # fmt: skip
    rows = select(table, args.status, args.kind, args.ids)
    names = _columns(args.columns, table.column_names)
    limit = (
        args.limit if args.limit is not None else (TABLE_LIMIT if args.format == "table" else None)
    )
    shown = rows.select(names)
    if limit is not None:
        shown = shown.slice(0, limit)
    if args.format == "csv":
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        pacsv.write_csv(_as_text(shown), sink)
        sys.stdout.write(sink.getvalue().to_pybytes().decode())
    elif args.format == "json":
        import json

        for row in shown.to_pylist():
            print(json.dumps(row, default=str, ensure_ascii=False))
    else:
        print(format_table(shown.to_pylist(), names))
        more = rows.num_rows - shown.num_rows
        tail = f"; {more} more (--limit N, or --format csv)" if more > 0 else ""
        print(f"{rows.num_rows} of {table.num_rows} result rows{tail}", file=sys.stderr)
    if lock_holder(storage, args.output, cfg.lock_ttl_s):
        print("results: a run into this output is in progress: these are the rows so far",
              file=sys.stderr)  # fmt: skip
    return ExitCode.OK


def _storage(args: argparse.Namespace, load_job) -> tuple[Any, Any]:
    """The output's config and storage: the run's own (job.json) unless storage flags say."""
    from batch_inpaint.cli.manifest import storage_from_args

    flags = ("endpoint_url", "region", "profile", "anon", "allow_http", "allowed_buckets",
             "retries")  # fmt: skip
    given = storage_from_args(args) if any(getattr(args, f) for f in flags) else None
    return load_job(args.output, given)[:2]


def _columns(value: str | None, have: list[str]) -> list[str]:
    from batch_inpaint.errors import ConfigError

    if value is None:
        return [c for c in DEFAULT_COLUMNS if c in have]
    if value.strip() == "all":
        return list(have)
    names = [c.strip() for c in value.split(",") if c.strip()]
    unknown = [c for c in names if c not in have]
    if unknown or not names:
        raise ConfigError(f"--columns: no column {unknown or value!r} in the results; "
                          f"columns: {', '.join(have)}")  # fmt: skip
    return names


def _as_text(table: Any) -> Any:
    """Nested columns (detections, lists) as JSON text: CSV holds scalars only."""
    import json

    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            values = [None if v is None else json.dumps(v, default=str)
                      for v in table.column(i).to_pylist()]  # fmt: skip
            table = table.set_column(i, field.name, pa.array(values, pa.string()))
    return table


def format_table(rows: list[dict], names: list[str], width: int = 60) -> str:
    """Rows as aligned text columns, each cell on one line and at most `width` characters."""

    def cell(v: Any) -> str:
        s = "" if v is None else " ".join(str(v).split())
        return s if len(s) <= width else s[: width - 1] + "…"

    cells = [[cell(r.get(n)) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.upper().ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]  # fmt: skip
    return "\n".join(lines)
