"""`python -m bench WORKLOAD [options]`: run one workload, print its table, write its record.
`python -m bench smoke`: every workload on the CPU with the tiny checkpoint, in seconds."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from . import WORKLOADS, resolve
from . import record as rec

SMOKE_DIR = rec.RESULTS_DIR / "smoke"  # git-ignored: smoke numbers mean nothing
# What each workload gets in a smoke run (on top of --device cpu --tiny --steps 2).
SMOKE = {
    "arch": ["--quick"],
    "w1": ["--size", "64", "--batch", "2"],
    "w2": ["--size", "64", "--batch", "2"],
    "w3": ["--width", "96", "--height", "64", "--repeats", "1"],
    "w4": ["--width", "128", "--height", "96", "--images", "2"],
    "w5": ["--sizes", "64,96", "--repeats", "1"],
    "w6": ["--size", "64", "--rows", "8", "--batch", "4", "--threads", "2"],
    "c1": ["--size", "64", "--rows", "8"],
    "c2": ["--size", "64", "--rows", "16", "--plain-only"],
    "crop": ["--quick"],  # after c2: the order of WORKLOADS
    "l1": ["--sizes", "64", "--tiny", "--warmup", "0", "--repeats", "1"],
    "l2": ["--size", "64", "--batch", "2"],
    "d1": ["--tiny", "--size", "64", "--warmup", "0", "--repeats", "1"],
    "d2": ["--size", "64", "--batch", "2", "--repeats", "1"],
    "d3": ["--size", "64", "--warmup", "0", "--repeats", "1"],
    "e1": ["--size", "64", "--rows", "4", "--repeats", "1", "--executors", "local"],
    "j1": ["--size", "64", "--rows", "4"],
}
# Not in a smoke run: it starts Ray and loads a 1.3 B-parameter model (tests/test_bench.py runs
# it, marked slow).
SMOKE_SKIP = {"sd2-job", "c3", "s1"}  # c3, s1: drivers in processes (tests/test_bench.py)
# `python -m bench gpu --quick`: each GPU workload cut down so all of them fit about 5 minutes on
# one H200 (scripts/gpu-check.sh); options given after `gpu` override these. A GPU workload added
# elsewhere (bench/detect.py, ...) registers in WORKLOADS (bench/__init__.py) and puts its short
# options here; `gpu` skips a registered workload whose module is not there.
GPU_QUICK = {
    "w1": ["--repeats", "1"],  # 50 steps kept: W1's goal is set at 50
    "w2": ["--repeats", "1"],
    "w3": ["--steps", "20", "--repeats", "1"],
    "w4": ["--images", "2"],
    "w5": ["--sizes", "512,1024,2048", "--steps", "10", "--repeats", "1"],
    "w6": ["--rows", "32", "--steps", "20"],
    "l2": ["--batch", "32", "--repeats", "1"],
    "d2": ["--batch", "8", "--repeats", "2"],
    "j1": ["--rows", "32", "--steps", "20"],
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="workloads:\n" + "\n".join(
                                    f"  {k:6} {'GPU' if v[1] else 'CPU'}  {v[2]}"
                                    for k, v in WORKLOADS.items())
                                + "\n  smoke  CPU  every workload, tiny checkpoint (numbers mean nothing)"
                                + "\n  gpu    GPU  every GPU workload above in turn, one model load;"
                                + "\n             --quick: each cut to fit ~5 min on an H200 (GPU_QUICK)"
                                + "\n  plot   -    python -m bench plot W5_RECORD.json: redraw its PNG"
                                + "\n  clean-set    synthetic cleaning set: detection and inpainting error (-h)")  # fmt: skip
    p.add_argument("workload", choices=[*WORKLOADS, "smoke", "gpu", "plot"])
    a = p.add_argument
    a("--device", default="auto", help="auto | cuda | cuda:N | cpu (cpu needs --tiny or --model)")
    a("--tiny", action="store_true", help="the tiny random checkpoint (smoke runs)")
    a("--model", help="a local diffusers SD-inpainting directory (l1, l2: a LaMa weights file): "
      "real weights instead of random")  # fmt: skip
    a("--cache-dir", help="where the random full-size checkpoint is saved (~2.6 GB)")
    a("--steps", type=int, help="denoising steps (default: the workload's)")
    a("--batch", type=int, help="images per forward pass of the 'best' variants (default 8)")
    a(
        "--size",
        type=int,
        help="square side (w1, w2, w6: 512; c1: both 512² and 1080p; sd2-job: max_side 128)",
    )
    a("--sizes", type=lambda s: [int(x) for x in s.split(",")],
      help="w5, l1 sides, e.g. 512,1024")  # fmt: skip
    a("--width", type=int, help="w3, w4 (default 1920); sd2-job: input side (512)")
    a("--height", type=int, help="w3, w4 (default 1080)")
    a("--images", type=int, help="w4: images per mode (default 4)")
    a(
        "--rows",
        type=int,
        help="c1 rows at 512² (24; a quarter at 1080p), c2 rows (1000 and 4000), w6 rows (64), "
        "sd2-job (4)",
    )
    a("--plan-rows", type=int, help="c3: manifest rows of the planning-only measurement (10 M)")
    a("--shards", type=int, help="s1: shards of each layout (default: rows / 1,000)")
    a("--s3-rows", type=int, help="s1: rows through the local S3 server (default: rows / 10)")
    a("--warmup", type=int, default=1, help="untimed calls before timing (compiled: >= 2)")
    a("--repeats", type=int, default=2, help="timed calls per variant")
    a("--variants", help="comma-separated variant names to keep (default: all)")
    a(
        "--quick",
        action="store_true",
        help="skip torch.compile variants (minutes to compile); "
        "c2: 48 rows of 128², local files only (a smoke run)",
    )
    a("--compile", action="store_true", help="w2: torch.compile the UNet")
    a("--backend", default="diffusers", choices=["diffusers", "opencv"],
      help="w4: opencv runs a labelled CPU proxy")  # fmt: skip
    a("--threads", type=int, help="w6: prepare and finish threads (default min(8, cores))")
    a(
        "--actors",
        type=int,
        help="sd2-job: model actors (1); c2: the job's max_actors (unset: the job's default)",
    )
    a("--cpus-per-actor", type=float, help="c2: Ray CPUs per model actor (job default)")
    a("--cpus-per-task", type=float, help="c2: Ray CPUs per prepare/finish task (job default)")
    a("--plain-only", action="store_true", help="c2: the lean and stage loops only (no job)")
    a("--executor", choices=["auto", "local", "ray"], help="c2: the job's executor (its default)")
    a("--sources", help="c2: files,s3 (default both; --quick: files)")
    a("--executors", help="e1: comma-separated executors to time (default local,ray)")
    a("--split-stages", action="store_true",
      help="c2: the job with fuse_stages false (the GPU graph), to compare")  # fmt: skip
    a("--results-dir", help="where records go (default bench/results/, smoke: results/smoke/)")
    a("--no-write", action="store_true", help="print only")
    a("--smoke", action="store_true", help=argparse.SUPPRESS)
    return p


def run(argv: list[str]) -> rec.Record:
    """Parse argv, run the workload, print its table and write its record."""
    args = parser().parse_args(argv)
    t0 = time.perf_counter()
    record = resolve(args.workload)(args)
    record.seconds = round(time.perf_counter() - t0, 2)
    record.command = "python -m bench " + shlex.join(argv)
    record.smoke = bool(args.tiny or args.smoke)
    print(f"\n== {record.workload}: {record.title}\n   {record.device}, {record.seconds:.1f} s")
    print(rec.table(record.rows))
    for key in ("ratios", "goals"):
        if getattr(record, key):
            print(f"{key}: {json.dumps(getattr(record, key), default=str)}")
    if not args.no_write:
        print(f"record: {record.write(args.results_dir)}")
    return record


def smoke(extra: list[str]) -> list[rec.Record]:
    """Every workload's CPU smoke variant; records go to bench/results/smoke/ unless told."""
    out = []
    if "--results-dir" not in extra:
        extra = [*extra, "--results-dir", str(SMOKE_DIR)]
    for name, opts in SMOKE.items():
        gpu = WORKLOADS[name][1]
        base = ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "0"] if gpu else []
        out.append(run([name, *base, *opts, "--smoke", *extra]))
    return out


def gpu(extra: list[str]) -> int:
    """Every GPU workload, one after another, on one model load (`--quick`: GPU_QUICK's short
    options first). One that fails is reported and the rest still run: 1 if any failed. On the
    CPU (`--device cpu`, a dry run) a workload needing a package not installed here is skipped."""
    import importlib.util
    import traceback

    quick = "--quick" in extra
    on_cpu = "cpu" in [b for a, b in zip(extra, extra[1:], strict=False) if a == "--device"]
    done: list[tuple[str, str, float]] = []
    for name, (target, needs_gpu, _) in WORKLOADS.items():
        if not needs_gpu:
            continue
        if importlib.util.find_spec(f"bench.{target.split(':')[0]}") is None:
            done.append((name, "skipped: its module is not there", 0.0))
            continue
        t0 = time.perf_counter()
        try:
            record = run([name, *(GPU_QUICK.get(name, []) if quick else []), *extra])
            done.append((name, "ok", record.seconds))
        except Exception as exc:  # noqa: BLE001 - the other workloads' numbers still count
            missing = _missing_module(exc)
            if on_cpu and missing:
                done.append((name, f"skipped: needs {missing}, not installed here", 0.0))
                continue
            traceback.print_exc()
            done.append((name, f"failed: {type(exc).__name__}: {exc}"[:200],
                         round(time.perf_counter() - t0, 1)))  # fmt: skip
    print("\n== gpu: " + ", ".join(f"{n} {s.split(':')[0]}" for n, s, _ in done))
    print(rec.table([{"workload": n, "result": s, "seconds": t} for n, s, t in done]))
    return 1 if any(s.startswith("failed") for _, s, _ in done) else 0


def _missing_module(exc: BaseException) -> str | None:
    """The package whose absence caused `exc`, also behind a friendlier error raised from it."""
    for _ in range(5):
        if isinstance(exc, ModuleNotFoundError):
            return exc.name
        exc = exc.__cause__ or exc.__context__
        if exc is None:
            return None
    return None


def plot(paths: list[str]) -> None:
    """Redraw the PNG of w5 records (JSON files), e.g. ones brought back from a GPU machine."""
    from .gpu_model import plot_w5

    for p in paths:
        data = json.loads(Path(p).read_text())
        fields = {k: data[k] for k in ("workload", "title", "device", "config", "rows")}
        out = plot_w5(rec.Record(**fields), Path(p).with_suffix(".png"))
        print(f"plot: {out}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "smoke":
            smoke(argv[1:])
        elif argv and argv[0] == "plot":
            plot(argv[1:])
        elif argv and argv[0] == "clean-set":  # its own options: python -m bench clean-set -h
            from .clean_set import main as clean_set

            return clean_set(argv[1:])
        elif argv and argv[0] == "gpu":
            return gpu(argv[1:])
        else:
            run(argv)
    except rec.NeedsGPU as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    Path(rec.RESULTS_DIR).mkdir(exist_ok=True)
    sys.exit(main())
