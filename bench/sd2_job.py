"""sd2-job: the full-size SD2-inpainting architecture (random weights, bench/sd2.py) through the
real Ray job (`batch_inpaint.run_job`, local Ray, diffusers backend, CPU, fp32) at a small working
size. It shows what only a 1.3 B-parameter model shows, without a GPU: the model's load time in
each actor, the actor's peak memory, what goes through the object store, and rows/s.

Everything is measured from outside the job, through Ray and /proc, so the job's own code is run
as a user runs it: the model actors' load time is the duration of their actor-creation task in
Ray's timeline; peak memory is each Ray worker's VmHWM (the kernel's resident high-water mark),
read every 0.25 s while the job runs; the object store's use is the raylet's store statistics
(peak bytes in use, bytes created, bytes spilled), read at the same times.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch_inpaint.image import codec
from batch_inpaint.image.masks import random_mask

from . import record as rec
from .sd2 import RANDOM_DIR_NAME, cache_root

REPO = Path(__file__).resolve().parents[1]
# in a model actor's Ray task names and process title: FusedStage when the stages run fused
# (the CPU default), ModelStage when split (beside a GPU)
MODEL_ACTORS = ("ModelStage", "FusedStage")
POLL_S = 0.25


def checkpoint(args) -> tuple[str, str, dict]:
    """(backend, model folder, description): the random full-size checkpoint unless --tiny or
    --model; built once (about a minute here) and reused from the bench cache."""
    t0 = time.perf_counter()
    if args.tiny:
        from batch_inpaint.models.tiny import make_tiny_model

        backend, kind = "tiny", "tiny"
        path = make_tiny_model(cache_root(args.cache_dir) / "tiny-sd-inpainting")
    elif args.model:
        backend, kind, path = "diffusers", "real weights", Path(args.model)
    else:
        backend, kind = "diffusers", "SD2-inpainting architecture, random weights"
        path = cache_root(args.cache_dir) / RANDOM_DIR_NAME
        # Built in a child process: building holds ~8 GB that this driver would keep during the
        # job, which would then measure the build, not the job.
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from bench.sd2 import "
                "make_random_checkpoint as m; from pathlib import Path; m(Path(sys.argv[2]), 'cpu')")  # fmt: skip
        subprocess.run([sys.executable, "-c", code, str(REPO), str(path)], check=True)
    weights = sum(p.stat().st_size for p in Path(path).rglob("*.safetensors"))
    info = {"kind": kind, "path": str(path), "safetensors_bytes": weights,
            "prepare_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
    return backend, str(path), info


def write_inputs(folder: Path, rows: int, side: int) -> str:
    """rows JPEG photos of side² with PNG LaMa masks and a manifest; returns its path."""
    ids, imgs, msks = [], [], []
    for i in range(rows):
        (folder / f"{i}.jpg").write_bytes(
            codec.encode_image(rec.sample_image(side, side, i), "jpeg", quality=92)
        )
        mask = random_mask(side, side, i, max_coverage=0.25).astype(np.uint8) * 255
        (folder / f"{i}_mask.png").write_bytes(codec.encode_image(np.dstack([mask] * 3)))
        ids.append(f"row-{i:04d}")
        imgs.append(f"{i}.jpg")
        msks.append(f"{i}_mask.png")
    path = folder / "manifest.parquet"
    pq.write_table(pa.table({"id": ids, "image": imgs, "mask": msks}), path)
    return str(path)


def _proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process in bytes ({} once it has gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state letter


def ray_workers(root: int) -> dict[int, str]:
    """pid -> process title ('ray::…') of every Ray worker under process `root`: this driver's
    local Ray (raylet and its workers are its children). Other Ray instances on the machine, such
    as a test run beside this one, are left out."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if not title.startswith("ray::"):
            continue
        pid = int(entry.name)
        up, hops = pid, 0
        while up > 1 and up != root and hops < 8:
            up, hops = _parent(up), hops + 1
        if up == root:
            out[pid] = title
    return out


class Sampler(threading.Thread):
    """Polls the Ray workers' memory, the object store and the output folder while the job runs."""

    def __init__(self, images_dir: Path):
        super().__init__(daemon=True)
        self.images_dir = images_dir
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self.workers: dict[int, dict] = {}  # pid -> {"titles", "peak_rss_bytes"}
        self.store_peak = 0
        self.store: dict[str, int] = {}
        self.store_error: str | None = None
        self.first_output_s: float | None = None
        self._state = None

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(POLL_S)
        self.sample()

    def sample(self) -> None:
        for pid, title in ray_workers(os.getpid()).items():
            now = round(time.perf_counter() - self.t0, 2)
            w = self.workers.setdefault(
                pid, {"titles": [], "peak_rss_bytes": 0, "seen_s": [now, now]}
            )
            w["seen_s"][1] = now
            if title not in w["titles"]:
                w["titles"].append(title)
            hwm = _proc_status(pid).get("VmHWM", 0)
            w["peak_rss_bytes"] = max(w["peak_rss_bytes"], hwm)
        stats = self.store_stats()
        if stats:
            self.store = stats
            self.store_peak = max(self.store_peak, stats.get("object_store_bytes_used", 0))
        if (
            self.first_output_s is None
            and self.images_dir.is_dir()
            and any(self.images_dir.iterdir())
        ):
            self.first_output_s = round(time.perf_counter() - self.t0, 2)

    def store_stats(self) -> dict[str, int]:
        """The raylet's object-store statistics (Ray's private API: None fields if it moved)."""
        try:
            import ray
            from ray._private import internal_api

            if self._state is None:
                gcs = ray.get_runtime_context().gcs_address
                self._state = internal_api.get_state_from_address(gcs)
            s = internal_api.get_memory_info_reply(self._state, timeout_seconds=5).store_stats
            keys = ("object_store_bytes_used", "object_store_bytes_avail",
                    "cumulative_created_bytes", "cumulative_created_objects",
                    "spilled_bytes_total", "object_store_bytes_fallback")  # fmt: skip
            return {k: int(getattr(s, k)) for k in keys}
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal: the job is the point
            self.store_error = f"{type(exc).__name__}: {exc}"[:200]
            return {}


def actor_inits(since_us: float) -> list[dict]:
    """Model actors' creation tasks from Ray's timeline: start and seconds each (the model loads
    in the actor's constructor, so this is the load time plus Ray Data's own set-up)."""
    import ray

    out = []
    for ev in ray.timeline():
        name = f"{ev.get('cat', '')} {ev.get('name', '')}"
        mine = float(ev.get("ts") or 0) >= since_us  # not an earlier job's on a shared Ray
        if (
            any(a in name for a in MODEL_ACTORS)
            and "__init__" in name
            and ev.get("ph") == "X"
            and mine
        ):
            out.append({"task": ev.get("name"), "start_us": ev.get("ts"),
                        "seconds": round(float(ev.get("dur", 0)) / 1e6, 2)})  # fmt: skip
    return sorted(out, key=lambda e: e["start_us"] or 0)


def _model_actors(workers: dict[int, dict]) -> dict[int, dict]:
    """The workers that ran a model actor (by title); else the largest one."""
    found = {
        p: w for p, w in workers.items() if any(a in t for a in MODEL_ACTORS for t in w["titles"])
    }
    if not found and workers:
        pid = max(workers, key=lambda p: workers[p]["peak_rss_bytes"])
        found = {pid: workers[pid]}
    return found


def sd2_job(args) -> rec.Record:
    import ray

    import batch_inpaint
    from batch_inpaint.config import JobConfig

    rows, side, steps = args.rows or 4, args.size or 128, args.steps or 2
    actors = args.actors or 1
    backend, model, info = checkpoint(args)
    print(f"checkpoint: {info}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sd2-job-"))
    (tmp / "in").mkdir()  # the job refuses an output inside the manifest's folder
    manifest = write_inputs(tmp / "in", rows, args.width or 512)
    cfg = JobConfig(manifest=manifest, output=str(tmp / "out"), backend=backend, model=model,
                    device="cpu", dtype="fp32", steps=steps, mode="full", max_side=side,
                    batch_size=args.batch or 0, min_actors=actors, max_actors=actors,
                    cpus_per_actor=args.cpus_per_actor or 1.0,
                    cpus_per_task=args.cpus_per_task or 1.0, resume=False,
                    output_format="png")  # fmt: skip
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_at_start = list(os.getloadavg())  # the record is made after the job
    joined = ray.is_initialized()  # e.g. a test session's Ray: used, and left running
    t0 = time.perf_counter()
    if not joined:
        ray.init(num_cpus=max(2, rec.cores()), include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    t_init = None if joined else time.perf_counter() - t0
    sampler = Sampler(tmp / "out" / "images")
    try:
        sampler.start()
        since_us, t0 = time.time() * 1e6, time.perf_counter()
        summary = batch_inpaint.run_job(cfg)
        t_job = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        time.sleep(1.0)  # the last task events
        inits = actor_inits(since_us)
    finally:
        sampler.stop.set()
        if not joined:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    r = _record(args, cfg, info, summary, sampler, inits, t_init, t_job, driver_rss)
    r.load_average = load_at_start
    return r


def _record(args, cfg, info, summary, sampler, inits, t_init, t_job, driver_rss) -> rec.Record:
    opts = cfg.inpaint_options()
    side, steps = opts.geometry.max_side, opts.generation.num_inference_steps
    counts = summary.get("counts", {})
    rows = summary.get("rows_this_run", sum(counts.values()))
    gib = 2**30
    models = _model_actors(sampler.workers)
    others = {p: w for p, w in sampler.workers.items() if p not in models}
    r = rec.Record(
        "sd2-job",
        f"SD2-inpainting architecture through run_job on the CPU: {rows} rows at {side}², "
        f"{steps} steps, fp32",
        rec.device_name("cpu"),
        {"model": info, "backend": cfg.backend, "rows": rows, "max_side": side, "steps": steps,
         "input_side": args.width or 512, "actors": cfg.min_actors,
         "cpus_per_actor": cfg.cpus_per_actor, "cpus_per_task": cfg.cpus_per_task,
         "batch_size": cfg.batch_size, "dtype": "fp32", "ray_cpus": max(2, rec.cores()),
         "poll_s": POLL_S},
    )  # fmt: skip
    for i, (pid, w) in enumerate(sorted(models.items())):
        load = inits[i]["seconds"] if i < len(inits) else None
        r.rows.append({"what": "model actor", "pid": pid, "load_s": load,
                       "peak_rss_gib": round(w["peak_rss_bytes"] / gib, 3),
                       "title": w["titles"][-1]})  # fmt: skip
    if others:
        top = max(others.values(), key=lambda w: w["peak_rss_bytes"])
        r.rows.append({"what": f"other Ray workers ({len(others)})",
                       "peak_rss_gib": round(top["peak_rss_bytes"] / gib, 3),
                       "title": top["titles"][-1]})  # fmt: skip
    store = sampler.store
    job = {"what": "job", "rows": rows, "ok": counts.get("ok"), "seconds": round(t_job, 2),
           "rows_per_s": round(rows / t_job, 4) if t_job else None,
           "first_output_s": sampler.first_output_s, "ray_init_s": None if t_init is None else round(t_init, 2),
           "object_store_peak_mib": round(sampler.store_peak / 2**20, 2),
           "object_store_created_mib": round(store.get("cumulative_created_bytes", 0) / 2**20, 2),
           "object_store_spilled_mib": round(store.get("spilled_bytes_total", 0) / 2**20, 2)}  # fmt: skip
    r.rows.append(job)
    model_s = (summary.get("stage_seconds_total") or {}).get("model_s")
    load = [x["load_s"] for x in r.rows if x.get("load_s") is not None]
    r.goals = {
        "success": bool(summary.get("success")),
        "model_load_s_per_actor": load,
        "actor_peak_rss_gib": [x["peak_rss_gib"] for x in r.rows if x["what"] == "model actor"],
        "object_store_peak_mib": job["object_store_peak_mib"],
        "object_store_created_bytes_per_row": round(store.get("cumulative_created_bytes", 0)
                                                    / rows) if rows else None,
        "rows_per_s": job["rows_per_s"],
        "model_s_per_row": round(model_s / rows, 3) if model_s and rows else None,
        "driver_peak_rss_gib_before_job": round(driver_rss / gib, 3),
    }  # fmt: skip
    r.config["summary"] = {k: summary.get(k) for k in ("rows", "counts", "errors_by_kind",
                                                      "wall_s", "rows_per_s",
                                                      "stage_seconds_total", "problems")}  # fmt: skip
    r.config["actor_init_tasks"] = inits
    r.config["workers"] = {str(p): w for p, w in sorted(sampler.workers.items())}
    if sampler.store_error and not store:
        r.notes.append(f"object store statistics unavailable: {sampler.store_error}")
    r.notes.append(
        "load_s: the model actor's creation task in Ray's timeline (model load in the actor's "
        "constructor plus Ray Data's set-up). peak_rss_gib: the worker's VmHWM. Object store: "
        "the raylet's statistics, peak of bytes in use over the run and bytes created in all."
    )
    return r
