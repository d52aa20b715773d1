"""Scheduled dataset cleaning: run this on a schedule (cron, KubeRay RayCronJob, Airflow) and each
run processes only what earlier runs into the same output did not finish.

Three sources of work:
  --manifest URI            a manifest that grows over time (new rows are picked up)
  --manifest SHARDS         shards that grow in number: WebDataset tars or Parquet with image
                            bytes (a folder, 's3://b/shards/{00000..09999}.tar', a glob); shards
                            already written under {output}/data/ are done, the others are run
                            (and done shards holding rows that failed transiently, redone)
  --images PREFIX --masks PREFIX [--mask-pattern '{stem}.*']
                            every image under a prefix, paired with its mask by the pattern; new
                            objects are picked up, unpaired ones are listed in the log

A lock object with an expiry ({output}/_LOCK) makes overlapping runs safe: a second run exits with
status 3 (ExitCode.LOCKED) instead of processing the same rows; a lock left by a dead run expires
after --lock-ttl-s. Every other flag of `batch-inpaint run` applies (see --help). Exit statuses are
those of `batch-inpaint run`: README.md, "Exit status", says what each value means.
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
    parser = argparse.ArgumentParser(prog="jobs/clean.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    parser.add_argument("--images", help="prefix of input images (instead of --manifest)")
    parser.add_argument("--masks", help="prefix of masks paired with --images")
    parser.add_argument("--mask-pattern", default="{stem}.*",
                        help="mask name for an image, '{stem}' = its path without extension")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InpaintError as exc:
        print(f"jobs/clean.py: {exc.kind}: {exc}", file=sys.stderr)
        return error_exit_status(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


def run(args: argparse.Namespace) -> int:
    from batch_inpaint.job.run import run_job
    from batch_inpaint.manifest.manifest import Manifest
    from batch_inpaint.storage.store import Storage

    if args.images:
        if args.manifest:
            raise InpaintError("give --manifest or --images/--masks, not both", kind="config")
        args.manifest = "pending"  # replaced below, once the prefixes are paired
    cfg = config_from_args(args)
    cfg.incremental = True
    cfg.resume = True
    cfg.require_io()
    if args.images:
        storage = Storage(cfg.storage_options())
        built = Manifest.from_prefix(args.images, args.masks, mask_pattern=args.mask_pattern,
                                     storage=storage)  # fmt: skip
        if len(built.unpaired):
            print(f"jobs/clean.py: unpaired files (not processed):\n{built.unpaired}")
        cfg.manifest = own_manifest(cfg, ".parquet")
        built.write(cfg.manifest)
    elif (todo := new_shards(cfg)) is not None:
        done, shards = todo
        if not shards:
            print(f"jobs/clean.py: no new shards ({done} done)")
            return ExitCode.OK
        print(f"jobs/clean.py: {len(shards)} shards to run ({done} done)")
        cfg.manifest = shards.write(own_manifest(cfg, ".shards.json")).source
    summary = run_job(cfg)
    return job_exit_status(summary)


def own_manifest(cfg, suffix: str) -> str:
    """A manifest per run, in the output (so the output must be the job's first; see
    job/driver/guard.py): a run in progress keeps reading its own while the next is built."""
    from batch_inpaint.job.driver import guard
    from batch_inpaint.job.driver.results import new_run_id
    from batch_inpaint.job.io.output_folder import MANIFESTS, OutputFolder
    from batch_inpaint.storage.store import Storage

    storage = Storage(cfg.storage_options())
    run_id = new_run_id()
    state = guard.check_owner(storage, cfg.output, cfg.allow_non_empty_output)
    if state != "ours":
        guard.claim(storage, cfg.output, run_id, state)
    return OutputFolder(storage, cfg.output).uri(MANIFESTS, f"{run_id}{suffix}")


def new_shards(cfg):
    """(shards done, the ShardSet to run) when the manifest names shards, else None: the shards
    with no output under {output}/data/ yet, and those whose rows failed transiently."""
    from dataclasses import replace

    from batch_inpaint.errors import NotFoundError
    from batch_inpaint.job.driver.results import PLAN_COLUMNS, read_results
    from batch_inpaint.job.io.output_folder import DATA, OutputFolder
    from batch_inpaint.manifest.shard_set import find_shard_set
    from batch_inpaint.storage.store import Storage
    from batch_inpaint.vocab import ErrorKind

    storage = Storage(cfg.storage_options())
    s = cfg.shards
    found = find_shard_set(cfg.manifest, storage, missing_ok=True, image_column=s.image_column,
                           mask_column=s.mask_column, id_column=s.id_column,
                           mask_member=s.mask_member)  # fmt: skip
    if found is None:
        return None  # a manifest of URIs
    data = OutputFolder(storage, cfg.output).uri(DATA)
    try:  # one listing: the shards written, whole (a temp name is hidden: '.x')
        names = (uri[len(data) + 1 :] for uri in storage.list(data))
        written = {n for n in names if not any(p[:1] in "._" for p in n.split("/"))}
    except NotFoundError:
        written = set()
    redo = set()
    results, _ = read_results(storage, cfg.output, [*PLAN_COLUMNS, "shard"])
    if results is not None and "shard" in results.column_names:
        transient = {k.value for k in ErrorKind if k.transient}
        for row in results.select(["shard", "error_kind"]).to_pylist():
            if row["error_kind"] in transient:
                redo.add(row["shard"])
    todo = tuple(x for x in found.shards if x.name not in written or x.name in redo)
    return len(found) - len(todo), replace(found, shards=todo)


if __name__ == "__main__":
    sys.exit(main())
