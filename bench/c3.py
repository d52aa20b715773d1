"""c3: scale evidence for the driver. Rows of small images (32² PNG, made once into a cache
folder) through the whole job on a private local Ray with the opencv backend, every driver in a
process of its own so its peak memory (RSS high-water) is its alone:

1. a full run: rows/s (whole job, and steady from the first result batch to the last) and the
   driver's peak RSS;
2. a second run SIGKILLed when half its rows are through, then a plan of the resume alone (no
   Ray: seconds and peak RSS), then the resume. Rows redone = rows whose image the killed run
   wrote but whose result row it never flushed (the resume makes them again), counted from the
   results and images/ (goal: at most one metadata part: `flush_rows` rows, rounded up to whole
   blocks as the parts are; the largest part's rows is the bound). The resume must
   process exactly the rows the results do not hold as done;
3. planning only (no Ray) on a synthetic manifest of `--plan-rows` rows (10 M) with half of them
   finished in the results, and on a tenth of it: seconds and peak RSS, and from the two the
   driver's cost per million manifest rows.

`python -m bench c3` (100,000 rows, 10 M planned), `--quick` (2,000 rows, 200,000 planned),
`--rows N`, `--plan-rows N`, `--cache-dir DIR` (default: the temp folder's batch-inpaint-c3).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import record as rec

PROGRESS = re.compile(r"progress: (\d+)/(\d+) rows")
RESULT = "C3RESULT "
SIDE = 32


def _cache(args) -> Path:
    root = (
        Path(args.cache_dir) if args.cache_dir else Path(tempfile.gettempdir()) / "batch-inpaint-c3"
    )
    root.mkdir(parents=True, exist_ok=True)
    return root


def make_rows(root: Path, rows: int) -> Path:
    """root/images/<i>.png (64 distinct 32² pictures, written round-robin), 8 masks, and
    root/manifest.parquet; made once (root/ready marks a finished build)."""
    import cv2

    if (root / "ready").exists():
        return root / "manifest.parquet"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    pictures = [
        cv2.imencode(".png", rec.sample_image(SIDE, SIDE, s))[1].tobytes() for s in range(64)
    ]
    for k in range(8):
        mask = np.zeros((SIDE, SIDE), np.uint8)
        mask[4 + k : 12 + k, 6:20] = 255
        (root / "masks" / f"{k}.png").write_bytes(cv2.imencode(".png", mask)[1].tobytes())
    for i in range(rows):
        (root / "images" / f"{i:07d}.png").write_bytes(pictures[i % 64])
    ids = [f"c3-{i:07d}" for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "image": [f"images/{i:07d}.png" for i in range(rows)],
                             "mask": [f"masks/{i % 8}.png" for i in range(rows)]}),
                   root / "manifest.parquet")  # fmt: skip
    (root / "ready").write_text("")
    return root / "manifest.parquet"


def job_spec(manifest: Path, output: Path, flush_rows: int) -> dict:
    return {"manifest": str(manifest), "output": str(output), "backend": "opencv",
            "device": "cpu", "address": "local", "output_format": "png",
            "png_compress_level": 1, "min_actors": 1, "max_actors": 1, "cpus_per_actor": 1.0,
            "cpus_per_task": 1.0, "progress_interval_s": 0.0, "flush_rows": flush_rows,
            "resume": True}  # fmt: skip


def _child(mode: str, spec: dict, log: Path, kill_at: int | None = None) -> dict:
    """Run `python -m bench.c3 MODE SPEC` in a session of its own; its stdout is read as it
    comes (progress lines, timed here). kill_at: SIGKILL it once that many rows are through."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("BATCH_INPAINT_PROGRESS_BARS", "0")
    root = Path(__file__).resolve().parent.parent
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.c3", mode, json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                cwd=root, env=env, start_new_session=True)  # fmt: skip
        marks: list[tuple[float, int]] = []
        out: dict = {"killed": False}
        for line in proc.stdout:
            m = PROGRESS.search(line)
            if m:
                marks.append((time.perf_counter() - t0, int(m.group(1))))
                if kill_at is not None and marks[-1][1] >= kill_at and not out["killed"]:
                    os.kill(proc.pid, signal.SIGKILL)
                    out.update(killed=True, killed_at_rows=marks[-1][1])
            elif line.startswith(RESULT):
                out.update(json.loads(line[len(RESULT) :]))
        proc.wait()
    if out["killed"]:
        time.sleep(2)  # Ray's processes of that run follow their driver; make sure of it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    elif proc.returncode != 0:
        raise RuntimeError(f"c3 {mode} exited {proc.returncode}; see {log}")
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    if len(marks) >= 2:
        (t_a, n_a), (t_b, n_b) = marks[0], marks[-1]
        out["steady_rows_per_s"] = round((n_b - n_a) / max(t_b - t_a, 1e-9), 1)
    return out


def _peak_rss_mib() -> float:
    """VmHWM, the RSS high-water of this process's memory since exec (ru_maxrss would start
    from the forking parent's RSS)."""
    return _status_mib("VmHWM:")


def _rss_mib() -> float:
    return _status_mib("VmRSS:")


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def drive(spec: dict) -> dict:
    """In the child: one whole run_job."""
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.run import run_job

    summary = run_job(JobConfig(**spec), echo=lambda line: print(line, flush=True))
    keep = ("success", "counts", "rows_this_run", "wall_s", "rows_per_s", "problems")
    return {**{k: summary.get(k) for k in keep}, "peak_rss_mib": _peak_rss_mib()}


def plan_only(spec: dict) -> dict:
    """In the child: what a run does before any cluster work, and nothing after it."""
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.driver import plan
    from batch_inpaint.storage.store import Storage

    base = _rss_mib()
    cfg = JobConfig(**spec)
    t0 = time.perf_counter()
    run, _ = plan.check_run(cfg, Storage(cfg.storage_options()), echo=lambda *_: None)
    t_scan = time.perf_counter() - t0
    decision = plan.decide(run)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "scan_s": round(t_scan, 2),
            "decide_s": round(seconds - t_scan, 2), "todo": decision.todo, "done": decision.done,
            "peak_rss_mib": _peak_rss_mib(), "rss_before_mib": base}  # fmt: skip


def make_plan_data(root: Path, rows: int, ok_files: int) -> tuple[Path, Path]:
    """A manifest of `rows` rows (parts of 1 M) and an output whose results hold half of them
    finished: the first `ok_files` ok with an (empty) image object, the rest error rows of bad
    input (done without a listing). Made once."""
    from batch_inpaint.job.driver.guard import MARKER

    manifest, out = root / "manifest", root / "out"
    if (root / "ready").exists():
        return manifest, out
    shutil.rmtree(root, ignore_errors=True)
    manifest.mkdir(parents=True)
    (out / "metadata").mkdir(parents=True)
    (out / "images").mkdir()
    (out / MARKER).write_text(json.dumps({"tool": "batch-inpaint", "run_id": "c3-synthetic"}))
    step = 1_000_000
    for k, lo in enumerate(range(0, rows, step)):
        ids = _ids(lo, min(rows, lo + step))
        images = pc.binary_join_element_wise("images/", ids, ".png", "")
        masks = pa.array(["masks/m.png"] * len(ids), pa.string())
        pq.write_table(pa.table({"id": ids, "image": images, "mask": masks}),
                       manifest / f"part-{k:05d}.parquet")  # fmt: skip
    done = rows // 2
    ids = _ids(0, done)
    ok = pa.array(np.arange(done) < ok_files)
    table = pa.table({
        "id": ids,
        "status": pc.if_else(ok, "ok", "error"),
        "error_kind": pc.if_else(ok, pa.scalar(None, pa.string()), "decode"),
        "output": pc.if_else(ok, pc.binary_join_element_wise("images/", ids, ".png", ""),
                             pa.scalar(None, pa.string())),
        "finished_at": pa.array(np.full(done, 1.7e15, "int64"), pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    pq.write_table(table, out / "metadata" / "results-c3-synthetic.parquet")
    for rid in ids.slice(0, ok_files).to_pylist():
        (out / "images" / f"{rid}.png").write_bytes(b"")
    (root / "ready").write_text("")
    return manifest, out


def _ids(lo: int, hi: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(lo, hi)), pa.string()), 9, "0")
    return pc.binary_join_element_wise("r", digits, "")


def _count_done(output: Path) -> int:
    from batch_inpaint.job.driver import results
    from batch_inpaint.storage.store import Storage

    table, _ = results.read_results(Storage(), str(output), results.PLAN_COLUMNS)
    return len(results.finished_ids(Storage(), str(output), False, table))


def c3(args) -> rec.Record:
    rows = args.rows or (2_000 if args.quick else 100_000)
    plan_rows = args.plan_rows or (200_000 if args.quick else 10_000_000)
    flush_rows = min(1000, max(50, rows // 20))
    cache = _cache(args)
    r = rec.Record("c3", f"scale: {rows} rows of {SIDE}² through local Ray (opencv); planning "
                   f"{plan_rows} rows", rec.device_name("cpu"),
                   {"rows": rows, "side": SIDE, "backend": "opencv", "cpus": rec.cores(),
                    "flush_rows": flush_rows, "plan_rows": plan_rows, "cache": str(cache)},
                   notes=["Each driver runs in a process of its own; peak RSS is its VmHWM "
                          "(Ray's other processes are not counted)."])  # fmt: skip
    manifest = make_rows(cache / f"rows-{rows}", rows)
    runs = cache / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    full = _child("drive", job_spec(manifest, runs / "full", flush_rows), runs / "full.log")
    r.rows.append({"what": "full run", "rows": rows, "ok": (full.get("counts") or {}).get("ok"),
                   "seconds": full["wall_s"], "rows_per_s": full.get("rows_per_s"),
                   "steady_rows_per_s": full.get("steady_rows_per_s"),
                   "driver_peak_rss_mib": full.get("peak_rss_mib"),
                   "success": full.get("success")})  # fmt: skip
    print(rec.table(r.rows[-1:]), flush=True)
    spec = job_spec(manifest, runs / "killed", flush_rows)
    killed = _child("drive", spec, runs / "killed.log", kill_at=rows // 2)
    done_before = _count_done(runs / "killed")
    written = sum(not f.startswith(".") for _, _, fs in os.walk(runs / "killed" / "images")
                  for f in fs)  # fmt: skip
    redone = written - done_before
    part_rows = max((pq.read_metadata(p).num_rows
                     for p in (runs / "killed" / "metadata").glob("part-*.parquet")), default=0)  # fmt: skip
    planned = _child("plan", spec, runs / "plan.log")
    resume = _child("drive", spec, runs / "resume.log")
    r.rows += [
        {"what": "killed at 50%", "rows": killed.get("killed_at_rows"), "killed": killed["killed"],
         "rows_finished_in_results": done_before, "images_written": written,
         "largest_part_rows": part_rows,
         "rows_unflushed": (killed.get("killed_at_rows") or 0) - done_before,
         "rows_in_flight": written - (killed.get("killed_at_rows") or 0)},
        {"what": "plan resume (half done)", "rows": rows, "seconds": planned["seconds"],
         "todo": planned["todo"], "driver_peak_rss_mib": planned["peak_rss_mib"]},
        {"what": "resume", "rows": resume.get("rows_this_run"), "rows_redone": redone,
         "rows_as_planned": resume.get("rows_this_run") == rows - done_before,
         "seconds": resume["wall_s"], "driver_peak_rss_mib": resume.get("peak_rss_mib"),
         "success": resume.get("success")},
    ]  # fmt: skip
    print(rec.table(r.rows[-3:]), flush=True)
    sizes = [plan_rows // 10, plan_rows]
    points = []
    for n in sizes:
        ok_files = min(n // 2, 10_000 if args.quick else 100_000)
        m, out = make_plan_data(cache / f"plan-{n}-{ok_files}", n, ok_files)
        got = _child("plan", {**job_spec(m, out, flush_rows), "resume": True}, runs / "p.log")
        points.append(got)
        r.rows.append({"what": "plan only", "rows": n, "finished": n // 2, "ok_objects": ok_files,
                       "seconds": got["seconds"], "scan_s": got["scan_s"],
                       "decide_s": got["decide_s"], "driver_peak_rss_mib": got["peak_rss_mib"],
                       "rss_before_mib": got["rss_before_mib"]})  # fmt: skip
        print(rec.table(r.rows[-1:]), flush=True)
    (small, big), span = points, (sizes[1] - sizes[0]) / 1e6
    r.ratios = {
        "plan_s_per_million_rows": round((big["seconds"] - small["seconds"]) / span, 3),
        "plan_mib_per_million_rows": round(
            (big["peak_rss_mib"] - small["peak_rss_mib"]) / span, 1),
    }  # fmt: skip
    r.goals = {
        "redone_at_most_one_part": redone <= part_rows,
        "rows_redone": redone,
        "plan_peak_rss_gib": round(big["peak_rss_mib"] / 1024, 2),
        "plan_within_4_gib": big["peak_rss_mib"] < 4096,
        "success": bool(full.get("success") and resume.get("success")),
        "resume_did_the_rest_only": resume.get("rows_this_run") == rows - done_before,
    }
    return r


if __name__ == "__main__":  # the child processes: python -m bench.c3 drive|plan SPEC_JSON
    what, spec_json = sys.argv[1], sys.argv[2]
    result = (drive if what == "drive" else plan_only)(json.loads(spec_json))
    print(RESULT + json.dumps(result, default=str), flush=True)
