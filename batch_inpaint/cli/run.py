"""`batch-inpaint run`: the Ray job, on a local Ray instance or a cluster (`--address`)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the inpainting job over a manifest (Ray Data)",
        description="Inpaint every row of a manifest with Ray Data and write images, metadata, "
        "run.json, report.html and _SUCCESS under --output. Rerunning into the same output "
        "resumes: only unfinished rows are processed. Every flag is also a key of the --config "
        "YAML file (with underscores); flags override the file.",
    )
    from batch_inpaint.config import add_arguments

    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from batch_inpaint.cli import job_exit_status
    from batch_inpaint.config import config_from_args
    from batch_inpaint.job.ray_job import run_job

    cfg = config_from_args(args).require_io()  # validated before any cluster work
    summary = run_job(cfg)
    return job_exit_status(summary)
