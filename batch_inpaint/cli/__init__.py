"""The `batch-inpaint` command. Each group of subcommands lives in its own module of this package
and registers itself through `add_parser(subparsers)`; `main` only dispatches.

Exit statuses are `vocab.ExitCode`, shared with jobs/inpaint.py and jobs/clean.py; README.md's
"Exit status" table says what each means."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping
from typing import Any

from batch_inpaint.errors import InpaintError
from batch_inpaint.vocab import ErrorKind, ExitCode

# module name -> registers one or more subcommands; imported lazily so `--help` stays fast.
COMMAND_MODULES = ("inpaint", "manifest", "run", "serve", "demo", "detect", "report", "results")


def job_exit_status(summary: Mapping[str, Any]) -> ExitCode:
    """A finished job's status: OK when it wrote _SUCCESS and no row is an error; ROW_ERRORS
    when it wrote _SUCCESS with error rows (within max_error_rate); ERROR_RATE when error rows
    of bad input exceeded max_error_rate (a rerun can't fix that); INCOMPLETE otherwise."""
    if summary.get("success"):
        errors = (summary.get("counts") or {}).get("error")
        return ExitCode.ROW_ERRORS if errors else ExitCode.OK
    if (summary.get("error_rate") or {}).get("exceeded"):
        return ExitCode.ERROR_RATE
    return ExitCode.INCOMPLETE


def error_exit_status(exc: InpaintError) -> ExitCode:
    """The status for an error raised before or instead of the work: LOCKED when another run
    holds the output's lock (or this run lost it), STORAGE when the storage failed past its
    retries (a rerun finishes), CONFIG for everything else (a bad setting, manifest or
    location)."""
    if exc.kind == ErrorKind.LOCKED.value:
        return ExitCode.LOCKED
    if exc.kind == ErrorKind.STORAGE_TRANSIENT.value:
        return ExitCode.STORAGE
    return ExitCode.CONFIG


def build_parser() -> argparse.ArgumentParser:
    from batch_inpaint import __version__
    from batch_inpaint.cli.flags import SuggestingParser, examples  # "did you mean" for flags

    parser = SuggestingParser(
        prog="batch-inpaint",
        description="Inpaint images at scale with Stable Diffusion inpainting models.",
        **examples(
            "batch-inpaint demo    # a first run on the bundled examples",
            "batch-inpaint manifest build --images photos/ --masks masks/ -o manifest.parquet",
            "batch-inpaint run --manifest manifest.parquet --output out/ --backend opencv",
            "(each command's --help ends with its own examples)",
        ),
    )
    parser.add_argument("--version", action="version", version=f"batch-inpaint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or ExitCode.OK)
    except InpaintError as exc:
        print(f"batch-inpaint {args.command}: error: {exc}", file=sys.stderr)
        return error_exit_status(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
