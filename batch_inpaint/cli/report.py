"""`batch-inpaint report --output O`: rebuild report.html of a finished output and write side-by-side
pictures (input | mask | output) of its sample, for any run's output, local or on object storage."""

from __future__ import annotations


def add_parser(sub) -> None:
    from batch_inpaint.cli.flags import examples
    from batch_inpaint.cli.manifest import add_storage_flags

    p = sub.add_parser(
        "report",
        help="rebuild report.html and side-by-side pictures for a run's output",
        description=__doc__,
        **examples(
            "batch-inpaint report --output out/    # out/report.html and out/side_by_side/",
            "batch-inpaint report --output s3://bucket/cleaned/ --to report-copy/",
        ),
    )
    p.add_argument("--output", required=True, help="the output of a `run` (local folder or URI)")
    p.add_argument(
        "--side-by-side",
        metavar="DIR",
        help="local folder for the side-by-side PNGs (default: side_by_side/ inside a local "
        "output; none for an object-storage output unless given)",
    )
    p.add_argument("--to", metavar="DIR",
                   help="write a local copy instead (report.html, side_by_side/ and the full-size "
                   "outputs the page links to), e.g. of an object-storage output, to open in a "
                   "browser; the output is only read")  # fmt: skip
    add_storage_flags(p)
    p.set_defaults(func=_report)


def _report(args) -> int:
    from batch_inpaint.cli.manifest import storage_from_args
    from batch_inpaint.job.report.summary import regenerate, summary_text
    from batch_inpaint.vocab import ExitCode

    flags = (
        "endpoint_url",
        "region",
        "profile",
        "anon",
        "allow_http",
        "allowed_buckets",
        "retries",
    )
    # Without storage flags, the run's own storage settings (job.json) apply.
    storage = storage_from_args(args) if any(getattr(args, f) for f in flags) else None
    got = regenerate(args.output, storage, args.side_by_side, to=args.to)
    print(summary_text(got["summary"], got["report"]))
    if got["side_by_side"]:
        n = len(got["pictures"])
        print(f"  pictures: {n} side-by-side (input | mask | output) in {got['side_by_side']}")
    return ExitCode.OK
