"""c2: the whole Ray job on this machine (opencv backend, rows of 512² from a local S3 server)
against a plain single-process loop that calls the same stage functions on the same rows.

Start-up is excluded from the ratio and reported apart: `ray.init` is timed on its own, and the
job's steady rate is taken from its first result batch to its last (the job echoes progress after
every batch), so neither Ray's start-up nor the time to the first row nor the final metadata pass
(verify, compact, report) counts. The whole-job rate without ray.init is reported too.
"""

from __future__ import annotations

import os
import re
import time

import pyarrow as pa

from batch_inpaint.config import JobConfig
from batch_inpaint.job.stages import JobContext, ModelStage, finish_batch, prepare_batch
from batch_inpaint.models.spec import model_spec
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import Status

from . import record as rec
from .s3local import NOTE, LocalS3, local_s3, upload_rows

PROGRESS = re.compile(r"progress: (\d+)/(\d+) rows")


def job_config(s3: LocalS3, manifest: str, out: str, args) -> JobConfig:
    return JobConfig(
        manifest=manifest, output=s3.uri(out), backend="opencv", device="cpu",
        endpoint_url=s3.endpoint, region="us-east-1", mode="full", output_format="png",
        png_compress_level=1, min_actors=1, max_actors=1,
        cpus_per_actor=args.cpus_per_actor or 1.0, cpus_per_task=args.cpus_per_task or 1.0,
        progress_interval_s=0.0, resume=False,
    )  # fmt: skip


def plain_loop(cfg: JobConfig, storage: Storage, manifest: pa.Table, batch: int) -> dict:
    """prepare_batch -> ModelStage -> finish_batch, one batch after another, in this process."""
    t0 = time.perf_counter()
    spec = model_spec(cfg.backend, cfg.model, cfg.revision, storage=storage)
    ctx = JobContext(config=cfg, storage=storage, manifest_base="", spec=spec)
    stage = ModelStage(ctx)  # loads the opencv backend as the job's actor does
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    status = []
    for i in range(0, manifest.num_rows, batch):
        out = finish_batch(stage(prepare_batch(manifest.slice(i, batch), ctx)), ctx)
        status += out.column("status").to_pylist()
    sec = time.perf_counter() - t0
    n = manifest.num_rows
    return {"path": "plain_loop", "rows": n, "seconds": sec, "rows_per_s": n / sec,
            "startup_s": t_load, "rows_not_ok": sum(s != Status.OK for s in status)}  # fmt: skip


def ray_job(cfg: JobConfig, cpus: int) -> dict:
    import ray

    from batch_inpaint.job.ray_job import run_job

    os.environ.setdefault("BATCH_INPAINT_PROGRESS_BARS", "0")
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    t_init = time.perf_counter() - t0
    marks: list[tuple[float, int]] = []

    def echo(line: str) -> None:
        m = PROGRESS.search(str(line))
        if m:
            marks.append((time.perf_counter(), int(m.group(1))))

    try:
        t0 = time.perf_counter()
        summary = run_job(cfg, echo=echo)
        t_end = time.perf_counter()
    finally:
        ray.shutdown()
    n = marks[-1][1] if marks else 0
    row = {"path": "ray_job", "rows": n, "seconds": t_end - t0, "startup_s": t_init,
           "success": summary.get("success"), "batches_seen": len(marks)}  # fmt: skip
    if len(marks) >= 2:
        (t_a, n_a), (t_b, n_b) = marks[0], marks[-1]
        row.update(
            first_row_after_s=round(t_a - t0, 2),
            steady_seconds=t_b - t_a,
            rows_per_s=(n_b - n_a) / (t_b - t_a),
            finalize_s=round(t_end - t_b, 2),
            rows_per_s_whole_job_without_init=n / (t_end - t0),
        )
    return row


def c2(args) -> rec.Record:
    import cv2

    cv2.setNumThreads(1)
    rows = args.rows or 1000
    size = args.size or 512
    batch = 8
    name = rec.device_name("cpu")
    r = rec.Record("c2", f"whole Ray job vs plain loop, opencv, {rows} rows of {size}²", name,
                   {"rows": rows, "size": size, "batch": batch, "backend": "opencv",
                    "cpus": rec.cores(), "output_format": "png/1",
                    "cpus_per_actor": args.cpus_per_actor or 1.0,
                    "cpus_per_task": args.cpus_per_task or 1.0,
                    "startup": "excluded: ray.init timed apart; rate from the first result batch "
                               "to the last (finalize also apart)"},
                   notes=[NOTE])  # fmt: skip
    s3 = local_s3()
    manifest = upload_rows(s3, "c2", rows, size, size)
    uri = s3.put_table("c2/manifest.parquet", manifest)
    storage = Storage(s3.options)
    plain = plain_loop(job_config(s3, uri, "c2/plain-out", args), storage, manifest, batch)
    print(rec.table([plain]), flush=True)
    r.rows.append(plain)
    if not args.plain_only:
        job = ray_job(job_config(s3, uri, "c2/job-out", args), rec.cores())
        print(rec.table([job]), flush=True)
        r.rows.append(job)
        if job.get("rows_per_s"):
            ratio = job["rows_per_s"] / plain["rows_per_s"]
            r.ratios["job_steady_vs_plain_loop"] = round(ratio, 3)
            r.ratios["job_without_init_vs_plain_loop"] = round(
                job["rows_per_s_whole_job_without_init"] / plain["rows_per_s"], 3
            )
            r.goals = {"goal_ratio": 0.9, "met": ratio >= 0.9}
    r.notes.append(
        f"The plain loop runs on one core; the Ray job may use all {rec.cores()} (driver, actor "
        "and CPU tasks share them, with the S3 server)."
    )
    return r
