"""j1 (GPU): `batch-inpaint run` itself on the GPU machine, in this process with the local executor
(Ray can't travel there: bench/gpu_pipeline.py's RAY_NOTE), on local files: the real prepare,
model and finish stages, the way a user runs the tool. Three runs:

- sd2: the SD2-inpainting architecture with random weights (the checkpoint w1 loads; `--tiny`:
  the tiny one), 512², full mode;
- lama: the LaMa architecture with random weights (bf16 on a GPU that has it);
- text: lama again, with its masks from the text detector (`detect: [text]`, PP-OCRv5 mobile det's
  architecture with random weights; `--tiny`: the tiny PP-OCR det). Random weights find text
  where they happen to: rows without any are skipped, and their detection time still counts.

Per run: rows/s (run.json), the GPU's busy share (NVML's utilisation sampled every 0.2 s when
nvidia-ml-py is there, else the model stage's seconds over the run's wall seconds: a lower bound
of what the GPU was given), peak GPU memory (torch), and the command, printed before it runs. W6's
question on the real job: the sd2 run's rows/s against the bare model loop (ModelStage on already
prepared batches) on the same rows.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from . import record as rec

RUNS = ("sd2", "lama", "text")


def j1(args) -> rec.Record:
    from .gpu_model import gpu_setup

    device, inp, model, name = gpu_setup(args, "j1")  # the SD2 model of w1 (or tiny), loaded once
    size, rows, steps = args.size or 512, args.rows or 32, args.steps or 20
    work = Path(tempfile.mkdtemp(prefix="bench-j1-"))
    r = rec.Record("j1", f"`batch-inpaint run` (local executor) at {size}², {rows} rows: sd2, "
                   "lama, lama + text detection", name,
                   {"size": size, "rows": rows, "steps": steps, "model": model,
                    "executor": "local", "tiny": bool(args.tiny)})  # fmt: skip
    plans = plan_runs(args, device, model, work, size, rows, steps)
    print("j1 runs:", flush=True)
    for _, argv in plans:
        print("+ batch-inpaint " + " ".join(argv), flush=True)
    for run, argv in plans:
        try:
            r.rows.append(run_one(run, argv, device, work / run / "out"))
        except Exception as exc:  # noqa: BLE001 - a run that fails is a result; the others run
            r.rows.append({"run": run, "error": f"{type(exc).__name__}: {exc}"[:300]})
    loop = model_loop(inp, device, work, size, rows, steps)
    r.rows.append(loop)
    sd2 = next(x for x in r.rows if x["run"] == "sd2")
    if sd2.get("rows_per_s") and loop.get("rows_per_s"):
        r.ratios["sd2_job_vs_model_loop_rows_per_s"] = round(sd2["rows_per_s"] / loop["rows_per_s"], 3)  # fmt: skip
    r.notes.append("busy_share: NVML utilisation when nvidia-ml-py is installed (busy_source says "
                   "which), else model seconds / wall seconds. rows_per_s includes loading the "
                   "model in the run, as a user's run does.")  # fmt: skip
    return r


def plan_runs(args, device: str, model: dict, work: Path, size: int, rows: int, steps: int):
    """[(run name, `batch-inpaint` argv)]: the inputs and models written under `work`."""
    from batch_inpaint.models.lama_tiny import make_tiny_lama

    from .gpu_pipeline import write_inputs
    from .lama import RANDOM_DIR_NAME
    from .sd2 import cache_root

    inputs = work / "in"
    inputs.mkdir(parents=True)
    table = write_inputs(inputs, rows, size)
    pq.write_table(table, inputs / "m.parquet")
    pq.write_table(table.select(["id", "image"]), inputs / "detect.parquet")  # masks: detected
    lama = str(make_tiny_lama(cache_root(args.cache_dir) / RANDOM_DIR_NAME))
    sd2 = (
        ["--backend", "tiny"] if args.tiny else ["--backend", "diffusers", "--model", model["path"]]
    )
    common = ["--device", device, "--executor", "local", "--mode", "full", "--max-side", str(size)]
    out = {run: str(work / run / "out") for run in RUNS}
    text_cfg = work / "text.yaml"
    text_cfg.write_text(json.dumps({"detect": ["text"], "detector": "none",
                                    "text_detector": text_detector(work, args.tiny)}))  # fmt: skip
    m = str(inputs / "m.parquet")
    return [
        ("sd2", ["run", "--manifest", m, "--output", out["sd2"], *sd2, "--steps", str(steps),
                 "--attention", "sdpa", *common]),
        ("lama", ["run", "--manifest", m, "--output", out["lama"], "--backend", "lama",
                  "--model", lama, *common]),
        ("text", ["run", "--config", str(text_cfg), "--manifest", str(inputs / "detect.parquet"),
                  "--output", out["text"], "--backend", "lama", "--model", lama, *common]),
    ]  # fmt: skip


def text_detector(work: Path, tiny: bool) -> str:
    """A PP-OCR det folder: the tiny one, or PP-OCRv5 mobile det's architecture, random weights."""
    from batch_inpaint.detect.tiny import build_text_detector, make_tiny

    if tiny:
        return str(make_tiny("text-detector", work / "text-detector"))
    path = work / "pp-ocrv5-mobile-det-random"
    build_text_detector(real=True).save_pretrained(path)
    pre = {"image_processor_type": "PPOCRV5ServerDetImageProcessor", "limit_side_len": 960,
           "limit_type": "max", "max_side_limit": 4000, "image_mean": [0.406, 0.456, 0.485],
           "image_std": [0.225, 0.224, 0.229]}  # fmt: skip
    (path / "preprocessor_config.json").write_text(json.dumps(pre))
    return str(path)


def run_one(run: str, argv: list[str], device: str, out: Path) -> dict:
    """One `batch-inpaint run` in this process: its exit status, rows/s, busy share, peak."""
    from batch_inpaint.cli import main

    rec.reset_peak(device)
    sampler = Utilisation(device)
    t0 = time.perf_counter()
    with sampler:
        code = main(argv)
    wall = time.perf_counter() - t0
    row = {"run": run, "exit": code, "wall_s": round(wall, 2), "peak_gpu_gib": rec.peak_gib(device)}
    summary = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    counts = summary.get("counts") or {}
    model_s = (summary.get("stage_seconds_total") or {}).get("model_s")
    row.update(
        rows=summary.get("rows_this_run"),
        ok=counts.get("ok"),
        rows_per_s=summary.get("rows_per_s"),
        model_s=model_s,
        detect_s=(summary.get("stage_seconds_total") or {}).get("detect_s"),
    )
    busy = sampler.share()
    if busy is not None:
        row.update(busy_share=busy, busy_source="nvml")
    elif model_s is not None and summary.get("wall_s"):
        # on the CPU the fused step has a model slot per core: their seconds add up past 1
        share = min(1.0, model_s / summary["wall_s"])
        row.update(busy_share=round(share, 3), busy_source="model_s / wall_s")
    return row


def model_loop(inp, device: str, work: Path, size: int, rows: int, steps: int) -> dict:
    """The bare model loop on the sd2 run's rows: ModelStage on batches prepared beforehand."""
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.stages.context import JobContext
    from batch_inpaint.job.stages.model import ModelStage
    from batch_inpaint.job.stages.prepare import prepare_batch
    from batch_inpaint.storage.store import Storage, StorageOptions

    inputs = work / "in"
    cfg = JobConfig(manifest=str(inputs / "m.parquet"), output=str(work / "loop"), device=device,
                    steps=steps, mode="full", max_side=size)  # fmt: skip
    ctx = JobContext(config=cfg, storage=Storage(StorageOptions()), manifest_base=str(inputs),
                     spec=inp.spec)  # fmt: skip
    stage = ModelStage(ctx, inpainter=inp)
    table = pq.read_table(inputs / "m.parquet")
    b = 8 if device.startswith("cuda") else 1
    prepared = [prepare_batch(table.slice(i, b), ctx) for i in range(0, rows, b)]
    stage(prepared[0])  # warm-up
    rec.sync(device)
    t0 = time.perf_counter()
    for t in prepared:
        stage(t)
    rec.sync(device)
    sec = time.perf_counter() - t0
    return {"run": "model_loop", "rows": rows, "wall_s": round(sec, 2), "rows_per_s": rows / sec}


class Utilisation:
    """NVML's GPU utilisation sampled every 0.2 s in a thread (None without nvidia-ml-py)."""

    def __init__(self, device: str):
        self.samples: list[int] = []
        self.handle = None
        if device.startswith("cuda"):
            try:
                import pynvml

                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                self.nvml = pynvml
            except Exception:  # noqa: BLE001 - not installed or no driver: the fallback says so
                self.handle = None
        self.stop = threading.Event()

    def __enter__(self):
        if self.handle is not None:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.handle is not None:
            self.thread.join(timeout=2)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def share(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None
