"""c2: the whole job, start-up included, against the loop a user would write on the same rows.

The job runs as a user runs it: `run_job` with the defaults (opencv backend, PNG out; its
executor picks itself), on local files and on a local S3 server. Two loops run in this process
on one core beside it:
- the lean loop (bench/lean.py): cv2.imread, Telea on mask > 127, cv2.imwrite PNG level 1 per
  row, the headline baseline (issue 27);
- the stage loop: the job's own fused CPU stage (FusedStage: prepare -> model -> finish) batch
  after batch: everything the job does per row, in one process.
Recorded per run:

- seconds, start-up included, and job/lean (goals: <= 1.0 at 1,000 rows, <= 0.7 at 4,000),
  job/stage loop beside it; CPU per row of the stage loop against the lean loop (goal <= 1.2);
- Ray up (the job's "Ray's own logs" line) and the first result row after it (goal: <= 5 s);
- object-store bytes per row: every Ray Data operator's output (ds.stats()), against the
  encoded input (image + mask files) per row (goal: <= 2x);
- CPU seconds per row of every process involved (this one and Ray's), to read through a busy
  machine: the ratio of wall times needs a quiet one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batch_inpaint.config import JobConfig
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.fused import FusedStage
from batch_inpaint.models.spec import model_spec
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import Status

from . import record as rec
from .lean import run_apart
from .s3local import NOTE, local_s3, upload_rows

PROGRESS = re.compile(r"progress: (\d+)/(\d+) rows")
RAY_UP = "Ray's own logs are in"  # run_job echoes it once Ray is up
GOALS = {1000: 1.0, 4000: 0.7}  # job seconds / lean loop seconds, start-up included
CPU_GOAL = 1.2  # CPU s per row: the job's stages (the stage loop) / the lean loop
FIRST_ROW_GOAL_S = 5.0
BYTES_GOAL = 2.0  # object-store bytes per row / encoded input bytes per row


class CpuMeter:
    """CPU seconds (user + system) of this process and all its descendants (Ray's GCS, raylet
    and workers), sampled in a thread so processes that exit before the end still count."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self._me = psutil.Process()
        self._seen: dict[int, float] = {}
        self._base = self._total()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _total(self) -> float:
        import psutil

        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self._seen[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return sum(self._seen.values())

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._total()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self._total() - self._base


def local_rows(folder: Path, rows: int, width: int, height: int) -> Path:
    """The same rows as s3local.upload_rows (JPEG q92 photos, PNG stroke masks <= 10%), as local
    files beside a manifest of relative paths; returns the manifest's path."""
    from batch_inpaint.image import codec
    from batch_inpaint.image.masks import random_mask

    from .s3local import mask_png

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    photos = [
        codec.encode_image(rec.sample_image(height, width, i), "jpeg", quality=92)
        for i in range(min(16, rows))
    ]
    ids, images, masks = [], [], []
    for i in range(rows):
        image, mask = f"images/{i:05d}.jpg", f"masks/{i:05d}.png"
        (folder / image).write_bytes(photos[i % len(photos)])
        m = random_mask(height, width, i, max_coverage=0.10)
        (folder / mask).write_bytes(mask_png(m))
        ids.append(f"row-{i:05d}")
        images.append(image)
        masks.append(mask)
    path = folder / "manifest.parquet"
    pq.write_table(pa.table({"id": ids, "image": images, "mask": masks}), path)
    return path


def plain_loop(cfg: JobConfig, storage: Storage, base: str, manifest: pa.Table) -> dict:
    """The stage loop: FusedStage (prepare -> model -> finish, what each CPU worker of the job
    runs), 8 rows at a time, in this process; the model load counts (start-up included, as for
    the job). process_cpu_s_per_row: this process alone (the lean loop's measure)."""
    meter = CpuMeter()
    t0, c0 = time.perf_counter(), time.process_time()
    spec = model_spec(cfg.backend, cfg.model, cfg.revision, storage=storage)
    ctx = JobContext(config=cfg, storage=storage, manifest_base=base, spec=spec)
    stage = FusedStage(ctx)
    status = []
    for i in range(0, manifest.num_rows, 8):
        status += stage(manifest.slice(i, 8)).column("status").to_pylist()
    sec = time.perf_counter() - t0
    n = manifest.num_rows
    return {"path": "stage_loop", "rows": n, "seconds": round(sec, 2), "rows_per_s": n / sec,
            "cpu_s_per_row": meter.stop() / n,
            "process_cpu_s_per_row": (time.process_time() - c0) / n,
            "rows_not_ok": sum(s != Status.OK for s in status)}  # fmt: skip


def ray_job(cfg: JobConfig) -> dict:
    """run_job as the CLI runs it (Ray, or in process: its executor decides); a Ray dataset is
    caught on its way to the driver so its stats give the bytes each operator put in the
    object store."""
    import importlib
    import sys

    from batch_inpaint.job import run as rj

    try:  # where the Ray graph is built: job/executors/ray_data.py since the executors
        graph = importlib.import_module("batch_inpaint.job.executors.ray_data")
    except ImportError:
        graph = rj

    caught = {}
    build = graph.build_dataset

    def catching(*args, **kwargs):
        caught["ds"] = build(*args, **kwargs)
        return caught["ds"]

    marks: list[tuple[float, int]] = []
    ray_up: list[float] = []

    def echo(line: str) -> None:
        m = PROGRESS.search(str(line))
        if m:
            marks.append((time.perf_counter(), int(m.group(1))))
        elif RAY_UP in str(line) and not ray_up:
            ray_up.append(time.perf_counter())

    os.environ.setdefault("BATCH_INPAINT_PROGRESS_BARS", "0")
    meter = CpuMeter()
    graph.build_dataset = catching
    try:
        t0 = time.perf_counter()
        summary = rj.run_job(cfg, echo=echo)
        sec = time.perf_counter() - t0
        store = object_store_bytes(caught.get("ds"))
        total = sum(store.values())
    finally:
        graph.build_dataset = build
        if sys.modules.get("ray") is not None:  # the next run starts its own: start-up counted
            sys.modules["ray"].shutdown()
    cpu = meter.stop()
    n = marks[-1][1] if marks else 0
    row = {"path": "job", "executor": "ray" if caught else "local", "rows": n,
           "seconds": round(sec, 2), "rows_per_s": n / sec, "cpu_s_per_row": cpu / max(n, 1), "success": summary.get("success"),
           "graph": "fused" if cfg.fuse_stages is not False else "split",
           "store_bytes_per_row": round(total / max(n, 1)), "batches_seen": len(marks),
           "store_bytes_per_row_by_operator": {k: round(v / max(n, 1))
                                               for k, v in store.items()}}  # fmt: skip
    if marks:
        row["first_row_s"] = round(marks[0][0] - t0, 2)  # from the run's start
    if ray_up:
        row["ray_up_s"] = round(ray_up[0] - t0, 2)
        if marks:
            row["first_row_after_ray_s"] = round(marks[0][0] - ray_up[0], 2)
            row["finalize_s"] = round(t0 + sec - marks[-1][0], 2)
    return row


def object_store_bytes(ds) -> dict[str, int]:
    """Bytes of every block each of the job's operators produced: each went through the object
    store (operators Ray Data fused count once, with their last output)."""
    if ds is None:
        return {}
    out: dict[str, int] = {}
    todo, seen = [ds.get_stats_summary()], set()
    while todo:  # each operator's summary hangs off its successor's parents
        summary = todo.pop()
        if id(summary) in seen:
            continue
        seen.add(id(summary))
        todo += summary.parents
        for op in summary.operators_stats:
            if op.output_size_bytes is not None:
                out[op.operator_name] = int(op.output_size_bytes.sum)
    return out


def job_config(manifest: str, out: str, **extra) -> JobConfig:
    """The defaults a user gets, with the opencv backend and PNG out."""
    return JobConfig(manifest=manifest, output=out, backend="opencv", output_format="png",
                     progress_interval_s=0.0, **extra)  # fmt: skip


def one_case(source: str, rows: int, size: int, work: Path, args) -> list[dict]:
    """Plain loop then job on `rows` rows of `size`² read from `source` (files or s3)."""
    extra = {}
    if source == "s3":
        s3 = local_s3()
        prefix = f"c2-{rows}-{size}"
        table = upload_rows(s3, prefix, rows, size, size)
        manifest = s3.put_table(f"{prefix}/manifest.parquet", table)
        out = lambda name: s3.uri(f"{prefix}/{name}")  # noqa: E731
        extra = {"endpoint_url": s3.endpoint, "region": "us-east-1"}
        storage, base = Storage(s3.options), ""
        sizes = [len(s3.client().get_object(Bucket=s3.bucket, Key=k)["Body"].read())
                 for k in (f"{prefix}/images/00001.jpg", f"{prefix}/masks/00001.png")]  # fmt: skip
    else:
        folder = work / f"{source}-{rows}-{size}"
        path = local_rows(folder, rows, size, size)
        manifest, table = str(path), pq.read_table(path)
        out = lambda name: str(folder / name)  # noqa: E731
        storage, base = Storage(job_config(manifest, out("x")).storage_options()), str(folder)
        sizes = [(folder / p).stat().st_size for p in ("images/00001.jpg", "masks/00001.png")]
    if args.split_stages:  # the GPU graph (CPU tasks beside the model actors), to compare
        extra["fuse_stages"] = False
    extra.update(
        {
            k: v
            for k, v in (
                ("max_actors", args.actors),
                ("cpus_per_actor", args.cpus_per_actor),
                ("cpus_per_task", args.cpus_per_task),
            )
            if v
        }  # fmt: skip
    )
    if args.executor:
        extra["executor"] = args.executor
    case = {"source": source, "size": size, "input_bytes_per_row": sum(sizes)}
    if source == "s3":
        lean = run_apart("s3", manifest, f"{prefix}/lean", (s3.endpoint, s3.bucket))
    else:
        lean = run_apart("files", manifest, str(folder / "lean"))
    lean = {**case, **lean}
    print(rec.table([lean]), flush=True)
    stages = {
        **case,
        **plain_loop(job_config(manifest, out("stages"), **extra), storage, base, table),
        "output_kb": _output_kb(storage, out("stages")),
    }
    stages["cpu_vs_lean"] = round(stages["process_cpu_s_per_row"] / lean["cpu_s_per_row"], 3)
    print(rec.table([stages]), flush=True)
    if args.plain_only:
        return [lean, stages]
    job = {**case, **ray_job(job_config(manifest, out("job"), **extra)),
           "output_kb": _output_kb(storage, out("job"))}  # fmt: skip
    job["job_vs_lean"] = round(job["seconds"] / lean["seconds"], 3)
    job["job_vs_stage_loop"] = round(job["seconds"] / stages["seconds"], 3)
    if job["executor"] == "ray":  # in process, no object store
        job["store_vs_input"] = round(job["store_bytes_per_row"] / case["input_bytes_per_row"], 4)
    print(rec.table([job]), flush=True)
    return [lean, stages, job]


def _output_kb(storage: Storage, output: str, most: int = 200) -> float:
    """Mean KB of (the first `most` of) the PNGs a run wrote under output/images."""
    uris = storage.list(output.rstrip("/") + "/images", suffixes=(".png",))[:most]
    return round(sum(storage.size(u) for u in uris) / max(len(uris), 1) / 1024, 1)


def c2(args) -> rec.Record:
    import cv2

    cv2.setNumThreads(1)  # the loops: one core
    size = args.size or (128 if args.quick else 512)
    counts = [args.rows] if args.rows else ([48] if args.quick else [1000, 4000])
    sources = ["files"] if args.quick else ["files", "s3"]
    sources = args.sources.split(",") if args.sources else sources
    name = rec.device_name("cpu")
    r = rec.Record("c2", f"whole job vs the lean loop a user would write, opencv, {counts} rows "
                   f"of {size}², start-up included", name,
                   {"rows": counts, "size": size, "sources": sources, "backend": "opencv",
                    "cpus": rec.cores(), "output_format": "png/1 (default)",
                    "job": "run_job, defaults (start-up included)", "executor": args.executor,
                    "lean_loop": "cv2.imread, cv2.inpaint(mask > 127, 3, TELEA), cv2.imwrite "
                                 "PNG level 1, one core",
                    "stage_loop": "FusedStage (prepare -> model -> finish), one core",
                    "max_actors": args.actors, "cpus_per_actor": args.cpus_per_actor,
                    "cpus_per_task": args.cpus_per_task,
                    "graph": "split (--split-stages)" if args.split_stages else "default"},
                   notes=[NOTE])  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-c2-"))
    try:
        for rows in counts:
            for source in sources:
                r.rows += one_case(source, rows, size, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for x in r.rows:
        key = f"{x['source']}_{x['rows']}"
        if x["path"] == "stage_loop":
            r.ratios[f"cpu_stage_loop_vs_lean_{key}"] = x["cpu_vs_lean"]
            r.goals[f"cpu_stage_loop_vs_lean_{key}_le_{CPU_GOAL}"] = x["cpu_vs_lean"] <= CPU_GOAL
        if x["path"] != "job":
            continue
        r.ratios[f"job_vs_lean_{key}"] = x["job_vs_lean"]
        r.ratios[f"job_vs_stage_loop_{key}"] = x["job_vs_stage_loop"]
        goal = GOALS.get(x["rows"])
        if goal is not None:
            r.goals[f"job_vs_lean_{key}_le_{goal}"] = x["job_vs_lean"] <= goal
        if "first_row_after_ray_s" in x:
            r.goals[f"first_row_{key}_le_{FIRST_ROW_GOAL_S:g}s"] = (
                x["first_row_after_ray_s"] <= FIRST_ROW_GOAL_S
            )
        if "store_vs_input" in x:
            r.ratios[f"store_vs_input_{key}"] = x["store_vs_input"]
            r.goals[f"store_{key}_le_{BYTES_GOAL:g}x_input"] = x["store_vs_input"] <= BYTES_GOAL
    r.notes.append(
        f"Both loops run on one core; the job uses all {rec.cores()} (on the CPU one fused "
        "prepare-model-finish worker per core). job_vs_lean is the headline: against the loop a "
        "user would write. Wall-time ratios need a quiet machine; cpu_s_per_row counts every "
        "process of each side, whatever the load."
    )
    load, end = r.load_average[0], os.getloadavg()[0]
    if max(load, end) > 0.5 * rec.cores():
        r.notes.append(
            f"BUSY MACHINE: load average {load:.1f} at the start and {end:.1f} at the end on "
            f"{rec.cores()} cores (other work running); wall times and their ratios are from "
            "a shared machine, CPU seconds per row less so."
        )
    return r
