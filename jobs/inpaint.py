"""Entrypoint for `ray job submit`:

    ray job submit --working-dir . -- python jobs/inpaint.py \
        --manifest s3://bucket/manifest.parquet --output s3://bucket/cleaned/ [--config job.yaml]

Inside a submitted job RAY_ADDRESS points at the cluster, so the job joins it instead of starting one.
Exit status: that of `batch-inpaint run` (batch_inpaint.vocab.ExitCode); README.md, "Exit status",
says what each value means.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from batch_inpaint.cli import error_exit_status, job_exit_status  # noqa: E402
from batch_inpaint.cli.flags import add_arguments, config_from_args  # noqa: E402
from batch_inpaint.errors import InpaintError  # noqa: E402
from batch_inpaint.vocab import ExitCode  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/inpaint.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args).require_io()
        from batch_inpaint.job.run import run_job

        summary = run_job(cfg)
    except InpaintError as exc:
        print(f"jobs/inpaint.py: {exc.kind}: {exc}", file=sys.stderr)
        return error_exit_status(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return job_exit_status(summary)


if __name__ == "__main__":
    sys.exit(main())
