"""`batch-inpaint run`: the job, in this process or on Ray (a private local instance or a cluster:
`--address`; `--executor`); with `--dry-run`, what the job would do and cost, without Ray and
without writing anything."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    from batch_inpaint.cli.flags import examples

    p = sub.add_parser(
        "run",
        help="run the inpainting job over a manifest (in process or on Ray Data)",
        description="Inpaint every row of a manifest (in this process, or on Ray Data for a "
        "cluster, several GPUs or many rows: --executor) and write images, metadata, "
        "run.json, report.html and _SUCCESS under --output. Rerunning into the same output "
        "resumes: only unfinished rows are processed. Every flag is also a key of the --config "
        "YAML file (with underscores); flags override the file. --dry-run checks everything a "
        "run checks first, counts the rows to do, plans a sample and estimates model time and "
        "GPU-hours, without starting Ray or writing anything.",
        **examples(
            "batch-inpaint run --manifest manifest.parquet --output out/ --backend opencv",
            "batch-inpaint run --manifest s3://bucket/m.parquet --output s3://bucket/out/ --dry-run",
            "batch-inpaint run --config job.yaml --address auto    # on a Ray cluster",
        ),
    )
    from batch_inpaint.cli.flags import add_arguments
    from batch_inpaint.job.driver.estimate import DEFAULT_SAMPLE

    add_arguments(p)
    g = p.add_argument_group("dry run")
    g.add_argument("--dry-run", action="store_true",
                   help="plan and estimate only: starts no Ray, writes nothing")  # fmt: skip
    g.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    g.add_argument("--gpu-hour-price", metavar="PRICE",
                   help="with --dry-run: price per GPU-hour, one for every GPU type (2.5) or "
                   "per type (h100=3.5,a100=2)")  # fmt: skip
    g.add_argument("--sample", type=int, metavar="N",
                   help=f"with --dry-run: rows validated and planned (default: {DEFAULT_SAMPLE})")  # fmt: skip
    p.set_defaults(func=_run)


def _run(args) -> int:
    from batch_inpaint.cli import job_exit_status
    from batch_inpaint.cli.flags import config_from_args
    from batch_inpaint.errors import ConfigError

    cfg = config_from_args(args).require_io()  # validated before any cluster work
    if not args.dry_run:
        for flag, value in (("--json", args.json), ("--gpu-hour-price", args.gpu_hour_price),
                            ("--sample", args.sample)):  # fmt: skip
            if value not in (None, False):
                raise ConfigError(f"{flag} goes with --dry-run (it changes nothing in a run)")
        from batch_inpaint.job.run import run_job

        return job_exit_status(run_job(cfg))
    from batch_inpaint.job.driver.estimate import DEFAULT_SAMPLE, plan_job

    if args.sample is not None and args.sample < 0:
        raise ConfigError(f"--sample must be >= 0, got {args.sample}")
    plan = plan_job(cfg, sample=DEFAULT_SAMPLE if args.sample is None else args.sample,
                    gpu_hour_price=args.gpu_hour_price)  # fmt: skip
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return dry_run_status(plan)


def dry_run_status(plan: dict) -> int:
    """The dry run exits as the run would before its work: 3 while another run holds the lock,
    2 when results are damaged (a run would set them aside and stop), else 0."""
    from batch_inpaint.vocab import ExitCode

    if plan["lock"]:
        return ExitCode.LOCKED
    return ExitCode.CONFIG if plan["damaged_results"] else ExitCode.OK


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.3g}" if isinstance(x, float) else str(x)


def format_plan(d: dict) -> str:
    """The dry run's dict as a page of text: what, how many, how it plans, what it costs."""
    m, s, r, v, p = d["model"], d["settings"], d["rows"], d["validation"], d["plan"]
    size = f"max_side {s['max_side']}" if s["mode"] == "full" else f"crop_size {s['crop_size'] or 'native'}"  # fmt: skip
    native = f"native {m['native_size']} px" if m["native_size"] else "any size"
    guess = " (assumed: its configs could not be read)" if m["spec_source"] == "assumed" else ""
    lines = [
        "batch-inpaint dry run: nothing was written and Ray was not started",
        f"  manifest  {d['manifest']}",
        f"  output    {d['output']}: {d['output_state']}",
        f"  model     {m['backend']} {m['model']} (revision {m['revision'] or 'none'}), "
        f"{native}{guess}",
        f"  settings  {s['mode']} mode, {size}, "
        + (
            ""
            if m["backend"] in ("opencv", "lama")
            else f"{s['steps']} steps, guidance {s['guidance']}, "
        )  # a fill uses neither
        + f"output {s['output_format']}",
    ]
    if d["lock"]:
        k = d["lock"]
        lines.append(f"  LOCKED    a run holds the output (host {k['host']} process {k['pid']}, "
                     f"renewed {k['age_s']} s ago): a run now would exit 3")  # fmt: skip
    for uri in d["damaged_results"]:
        lines.append(f"  DAMAGED   {uri} can't be read: a run would set it aside and stop")
    lines.append(f"rows: {_n(r['manifest'])} in the manifest, {_n(r['done'])} done, "
                 f"{_n(r['bad_ids'])} with a duplicate or missing id, {_n(r['to_do'])} to do")  # fmt: skip
    if v["rows_checked"]:
        found = "no problem found" if not v["problems"] else f"{v['problems']} problem(s): " + \
            ", ".join(f"{k} {n}" for k, n in v["by_kind"].items())  # fmt: skip
        lines.append(f"validation of {v['rows_checked']} sampled rows: {found}")
        lines += [f"  e.g. {e}" for e in v["examples"][:3]]
        if v.get("suspicious_masks"):
            odd = ", ".join(f"{k} {n}" for k, n in v["suspicious_masks"].items())
            lines.append(f"suspicious masks in the sample (look at them): {odd}")
            lines += [f"  e.g. {e}" for e in v["suspicious_examples"][:3]]
    if p["sampled"]:
        st = p["status"]
        lines.append(f"plan of {p['sampled']} sampled rows: {st.get('ok', 0)} to inpaint, "
                     f"{st.get('skipped', 0)} with an empty mask, {st.get('error', 0)} would "
                     f"fail; {p['passes_per_row']:.2f} model passes per row")  # fmt: skip
        total = sum(p["passes_by_size"].values()) or 1
        lines.append(f"  {'working size':<14}{'passes':>8}{'share':>8}")
        items = list(p["passes_by_size"].items())
        for size_, n in items[:12]:
            lines.append(f"  {size_:<14}{n:>8}{n / total:>8.0%}")
        if len(items) > 12:
            rest = sum(n for _, n in items[12:])
            lines.append(f"  {f'{len(items) - 12} others':<14}{rest:>8}{rest / total:>8.0%}")
    lines += _estimate_lines(d["estimate"])
    return "\n".join(lines)


def _estimate_lines(e: dict) -> list[str]:
    lines = [f"estimate: {e['method']}"]
    if e.get("tflop_per_row") is not None:
        lines.append(f"  {e['tflop_per_row']:,.1f} TFLOP per row, {e['total_pflop']:,.3g} PFLOP "
                     f"in all; FLOPs from {e['flops_source']}")  # fmt: skip
    if e.get("cpu"):
        c = e["cpu"]
        lines.append(f"  CPU: {_n(c['core_hours'])} core-hours at {c['rows_per_s_per_core_at_512']}"
                     f" rows/s per core per 512² pass; record: {c['record']}")  # fmt: skip
    g = e.get("gpu")
    if g:
        priced = any(row["cost"] is not None for row in g["rows"])
        on = f"h on {g['gpus_used']} GPU" + ("s" if g["gpus_used"] > 1 else "")
        head = f"  {'GPU':<6}{'rows/s':>9}{'GPU-hours':>11}{on:>12}"
        lines.append(head + (f"{'cost':>10}" if priced else "") + "  source")
        for row in g["rows"]:
            cost = f"{_n(row['cost']):>10}" if row["cost"] is not None else (f"{'-':>10}" if priced else "")  # fmt: skip
            lines.append(f"  {row['gpu']:<6}{_n(row['rows_per_s']):>9}{_n(row['gpu_hours']):>11}"
                         f"{_n(row['wall_hours']):>12}{cost}  {row['source']}")  # fmt: skip
        lines.append(f"  utilisation: {g['utilisation_source']}")
    m = e.get("per_million_images")
    if m and m["rows"]:
        price = {r["price_source"] for r in m["rows"]}
        lines.append(f"  per GPU, images/s and $ per million images ({m['method']}; price: "
                     f"{', '.join(sorted(price))}):")  # fmt: skip
        for size in dict.fromkeys(r["size"] for r in m["rows"]):
            got = [r for r in m["rows"] if r["size"] == size]
            lines.append(f"    {size}: " + "; ".join(
                f"{r['gpu']} {_n(r['images_per_s_per_gpu'])}/s ${r['usd_per_million_images']:,.0f}"
                + ("" if r["source"].startswith("extrapolated") else " (measured)")
                for r in got))  # fmt: skip
    lines += [f"  note: {n}" for n in e.get("notes", [])]
    return lines
