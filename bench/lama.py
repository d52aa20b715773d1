"""LaMa workloads (the `lama` backend, through LamaInpainter.inpaint, one forward pass per call):

- l1 (CPU): images/s per core at 512² and 1024², batch 1, fp32; one torch thread, then every core.
- l2 (GPU): 512² batch sweep in fp32 and bf16 (autocast), bf16's largest pixel difference from
  fp32 on the same inputs (fp16 is refused for LaMa: its FFT layers break in it), the goal of 100 images/s on one H100/H200, and the
  ratio to SD2's w1 when w1 ran earlier in the same process (`python -m bench gpu`).

Without --model both use the LaMa architecture with random weights (make-tiny-model --kind lama):
the same 51 M parameters and the same arithmetic as big-lama, so the timings hold; the bf16
difference is measured on random weights and says only whether the FFT layers stay finite.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from batch_inpaint.models.base import is_out_of_memory
from batch_inpaint.params import GenerationParams

from . import record as rec
from .gpu_model import inputs
from .sd2 import cache_root

GOAL_IMAGES_PER_S = 100.0  # 512², one H100/H200 (issue: a LaMa-class backend)
RANDOM_DIR_NAME = "lama-random-v1"
HALF_TOLERANCE = 8  # levels of 255 from fp32 above which bf16 is not recommended
_PARAMS = GenerationParams()


def load_lama(args, device: str):
    """(LamaInpainter in fp32, model description) for --model FILE or the random LaMa."""
    from batch_inpaint.models import load_inpainter
    from batch_inpaint.models.lama_tiny import make_tiny_lama

    if getattr(args, "model", None):
        kind, path = "real weights", args.model
    else:
        kind = "LaMa architecture, random weights"
        path = str(make_tiny_lama(cache_root(args.cache_dir) / RANDOM_DIR_NAME))
    inp = load_inpainter("lama", path, device=device, dtype="fp32")
    import spandrel
    import torchvision

    params = round(sum(p.numel() for p in inp.model.parameters()) / 1e6, 1)
    return inp, {"kind": kind, "path": path, "params_m": params,
                 "spandrel": spandrel.__version__, "torchvision": torchvision.__version__}  # fmt: skip


def conv_gflop(inp, size: int) -> float:
    """GFLOP per image at size² counted by torch (convolutions; the FFTs are not counted), from
    one 128² pass scaled by area: the counted work is linear in the pixel count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    img, mask = torch.zeros(1, 3, 128, 128), torch.zeros(1, 1, 128, 128)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        inp.model.to("cpu")(img, mask)
    inp.model.to(inp.device)
    return counter.get_total_flops() / 1e9 * (size / 128) ** 2


def call(inp, images, masks):
    n = len(images)
    return inp.inpaint(images, masks, _PARAMS, [""] * n, [None] * n, list(range(n)))


def l1(args) -> rec.Record:
    import torch

    device = "cpu"
    inp, model = load_lama(args, device)
    sizes = args.sizes or ([args.size] if args.size else [512, 1024])
    threads = sorted({1, rec.cores()})
    before = torch.get_num_threads()
    r = rec.Record("l1", "LaMa on the CPU: images/s per core, batch 1, fp32", rec.device_name(device),
                   {"sizes": sizes, "threads": threads, "batch": 1, "dtype": "fp32",
                    "model": model, "warmup": args.warmup, "repeats": args.repeats})  # fmt: skip
    try:
        for size in sizes:
            images, masks = inputs(1, size, size)
            gflop = conv_gflop(inp, size)
            for t in threads:
                torch.set_num_threads(t)
                for _ in range(args.warmup):
                    call(inp, images, masks)
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.repeats):
                    call(inp, images, masks)
                sec = (time.perf_counter() - wall) / args.repeats
                cpu_sec = (time.process_time() - cpu) / args.repeats
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
                # Per core from CPU time: on a shared machine, waiting for a core is not work.
                r.rows.append({"size": size, "threads": t, "s_per_image": sec,
                               "cpu_s_per_image": cpu_sec, "images_per_s": 1 / sec,
                               "images_per_s_per_core": 1 / cpu_sec,
                               "conv_gflop_per_image": round(gflop, 1),
                               "gflop_per_cpu_s": round(gflop / cpu_sec, 1),
                               "process_max_rss_gib": round(rss, 2)})  # fmt: skip
    finally:
        torch.set_num_threads(before)
    for size in sizes:
        one = next(x for x in r.rows if x["size"] == size and x["threads"] == 1)
        every = max((x for x in r.rows if x["size"] == size), key=lambda x: x["threads"])
        if every["threads"] > 1:
            r.ratios[f"scaling_{size}"] = round(
                every["images_per_s"] / (one["images_per_s"] * every["threads"]), 3
            )
    r.notes.append("images_per_s_per_core = 1 / CPU seconds per image (process time), so that "
                   "time spent waiting for a core on a shared machine does not count; wall-clock "
                   "s_per_image and load_average show how busy the machine was.")  # fmt: skip
    return r


def l2(args) -> rec.Record:
    import torch

    device = rec.resolve_device(args.device)
    if not device.startswith("cuda") and not (args.device == "cpu" and (args.tiny or args.model)):
        raise rec.NeedsGPU("l2")
    before = torch.get_num_threads()
    if device == "cpu":  # a smoke run: a second thread only waits on a busy machine
        torch.set_num_threads(1)
    inp, model = load_lama(args, device)
    name = rec.device_name(device)
    size = args.size or 512
    top = args.batch or 64
    batches = sorted({b for b in (1, 8, 16, 32, 64, top) if b <= top})
    dtypes = ["fp32", "bf16"] if device.startswith("cuda") else ["fp32"]
    images, masks = inputs(top, size, size)
    ref = min(8, top)  # bf16 is compared with fp32 on these inputs
    r = rec.Record("l2", f"LaMa {size}² batch sweep: fp32 vs bf16 (autocast)", name,
                   {"size": size, "batches": batches, "dtypes": dtypes, "model": model,
                    "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                    "tf32_conv": bool(torch.backends.cudnn.allow_tf32),
                    "warmup": args.warmup, "repeats": args.repeats})  # fmt: skip
    fp32_out = None
    for dt in dtypes:
        from batch_inpaint.models.lama_backend import resolve_lama_dtype

        inp.dtype = resolve_lama_dtype(dt, device)
        diff = None
        try:
            out = call(inp, images[:ref], masks[:ref])
            if dt == "fp32":
                fp32_out = out
            else:
                d = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(out, fp32_out, strict=True)]  # fmt: skip
                diff = {"max_diff_vs_fp32": int(max(x.max() for x in d)),
                        "mean_diff_vs_fp32": round(float(np.mean([x.mean() for x in d])), 4)}  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a dtype that fails is a result
            r.rows.append(
                {"dtype": dt, "batch": ref, "error": f"{type(exc).__name__}: {exc}"[:300]}
            )
            continue
        for b in batches:
            row = {"dtype": dt, "batch": b, **(diff or {})}
            try:
                sec, peak = rec.timed(lambda b=b: call(inp, images[:b], masks[:b]), device,
                                      args.warmup, args.repeats)  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                if not is_out_of_memory(exc):
                    raise
                rec.reset_peak(device)
                r.rows.append({**row, "error": "out of GPU memory"})
                break
            r.rows.append({**row, "s_per_image": sec / b, "images_per_s": b / sec,
                           "peak_gpu_gib": peak})  # fmt: skip
    inp.dtype = torch.float32
    torch.set_num_threads(before)
    _summarise(r, device, name, args)
    return r


def _summarise(r: rec.Record, device: str, name: str, args) -> None:
    ok = [x for x in r.rows if x.get("images_per_s")]
    if not ok:
        return
    best = max(ok, key=lambda x: x["images_per_s"])
    fp32 = max(
        (x for x in ok if x["dtype"] == "fp32"), key=lambda x: x["images_per_s"], default=None
    )
    usable = [x for x in ok if x.get("max_diff_vs_fp32", 0) <= HALF_TOLERANCE]
    pick = max(usable, key=lambda x: x["images_per_s"]) if usable else fp32
    r.goals = {"goal_images_per_s": GOAL_IMAGES_PER_S,
               "best_images_per_s": round(best["images_per_s"], 2),
               "best": f"{best['dtype']} batch {best['batch']}",
               "met": best["images_per_s"] >= GOAL_IMAGES_PER_S,
               "recommended_cuda_dtype": pick["dtype"] if pick else None}  # fmt: skip
    if fp32:
        for dt in ("bf16",):
            top = max((x for x in ok if x["dtype"] == dt), key=lambda x: x["images_per_s"], default=None)  # fmt: skip
            if top:
                r.ratios[f"{dt}_vs_fp32_images_per_s"] = round(top["images_per_s"] / fp32["images_per_s"], 3)  # fmt: skip
    w1 = _w1_of_this_process(args.results_dir or rec.RESULTS_DIR, name)
    if w1:
        r.ratios["lama_vs_sd2_w1_best_images_per_s"] = round(best["images_per_s"] / w1, 1)
    else:
        r.notes.append(
            "No SD2 w1 record from this process: run `python -m bench gpu` for the ratio."
        )
    r.notes.append(f"recommended_cuda_dtype: the fastest dtype within {HALF_TOLERANCE}/255 of "
                   "fp32 (random weights unless --model); lama_backend.CUDA_DEFAULT_DTYPE (bf16) "
                   "follows it.")  # fmt: skip


def _w1_of_this_process(folder, device_name: str) -> float | None:
    """w1's best images/s if this process wrote a w1 record (run before l2 by `bench gpu`)."""
    try:
        started = os.stat(f"/proc/{os.getpid()}").st_ctime
    except OSError:
        started = time.time() - time.monotonic()
    best = None
    for p in sorted(Path(folder).glob("w1_*.json"), key=lambda p: p.stat().st_mtime):
        if p.stat().st_mtime < started:
            continue
        data = json.loads(p.read_text())
        value = (data.get("goals") or {}).get("best_images_per_s")
        if data.get("device") == device_name and value and not data.get("smoke"):
            best = float(value)
    return best
