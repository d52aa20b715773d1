"""GPU workloads through the tool's own per-image and per-batch paths:

- w4: 1920x1080 with LaMa-style masks covering <= 10%: crop mode against full mode, per image,
  through inpaint_array (the tool's defaults otherwise). `--backend opencv` runs it on any CPU as
  a proxy (labelled so): it shows the geometry's cost, not the diffusion model's.
- w6: the GPU stage (ModelStage) fed by threads running the real prepare_batch / finish_batch
  against the plain model loop on the same, already prepared batches. Ray can't travel to the GPU
  machine (its wheel is larger than what can be carried there), so threads stand in for Ray's CPU
  tasks; the question is the same: do the CPU stages keep the GPU busy?
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from batch_inpaint.config import JobConfig
from batch_inpaint.image import codec
from batch_inpaint.image.inpaint import inpaint_array
from batch_inpaint.image.masks import random_mask
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.params import GenerationParams, GeometryOptions, InpaintOptions
from batch_inpaint.storage.store import Storage, StorageOptions
from batch_inpaint.vocab import Status

from . import record as rec
from .gpu_model import gpu_setup
from .sd2 import Variant, apply_variant

RAY_NOTE = (
    "Ray can't travel to the GPU machine (its ~79 MB wheel exceeds the 64 MiB that can be carried "
    "there, and the machine has no network), so a thread pool runs the real prepare_batch and "
    "finish_batch in place of Ray's CPU tasks."
)


def w4(args) -> rec.Record:
    w, h = (args.width or 1920), (args.height or 1080)
    n = args.images or 4
    if args.backend == "opencv":
        from batch_inpaint.models import load_inpainter

        device, inp, name = "cpu", load_inpainter("opencv"), rec.device_name("cpu")
        model = {"kind": "opencv (CPU proxy)", "path": inp.model_id}
    else:
        device, inp, model, name = gpu_setup(args, "w4")
        apply_variant(inp, Variant("sdpa"))
    params = GenerationParams(num_inference_steps=args.steps or 50, guidance_scale=7.5)
    images = [rec.sample_image(h, w, 100 + i) for i in range(n)]
    masks = [random_mask(h, w, 100 + i, max_coverage=0.10) for i in range(n)]
    r = rec.Record("w4", f"{w}x{h}, LaMa masks <= 10%: crop vs full per image (inpaint_array)",
                   name, {"width": w, "height": h, "images": n, "model": model,
                          "steps": params.num_inference_steps, "attention": "sdpa",
                          "mask_coverage": [round(float(m.mean()), 4) for m in masks]},
                   proxy=args.backend == "opencv")  # fmt: skip
    if r.proxy:
        r.notes.append("CPU PROXY: opencv backend, not the diffusion model; its cost follows the "
                       "masked area, so this shows geometry overhead, not the GPU ratio.")  # fmt: skip
    for mode in ("full", "crop"):
        opts = InpaintOptions(generation=params, geometry=GeometryOptions(mode=mode))
        inpaint_array(images[0], masks[0], inp, opts, seed=1)  # warm-up
        rec.reset_peak(device)
        times, regions, work = [], [], []
        for img, m in zip(images, masks, strict=True):
            t0 = time.perf_counter()
            res = inpaint_array(img, m, inp, opts, seed=1)
            rec.sync(device)
            times.append(time.perf_counter() - t0)
            regions.append(len(res.regions))
            work.append(sum(x.work_size[0] * x.work_size[1] for x in res.regions))
        r.rows.append({"mode": mode, "s_per_image": float(np.mean(times)),
                       "s_per_image_max": max(times), "images_per_s": n / sum(times),
                       "regions_per_image": float(np.mean(regions)),
                       "model_megapixels_per_image": float(np.mean(work)) / 1e6,
                       "peak_gpu_gib": rec.peak_gib(device)})  # fmt: skip
    full, crop = r.rows
    r.ratios["crop_vs_full_s_per_image"] = round(crop["s_per_image"] / full["s_per_image"], 3)
    r.notes.append("full mode resizes the frame to max_side 1024 (the default); crop mode sends "
                   "each merged masked region at the model's native size.")  # fmt: skip
    return r


def write_inputs(folder: Path, rows: int, size: int) -> pa.Table:
    """rows JPEG images and PNG masks in a local folder, and a manifest table pointing at them."""
    ids, imgs, msks = [], [], []
    for i in range(rows):
        (folder / f"{i}.jpg").write_bytes(
            codec.encode_image(rec.sample_image(size, size, i % 16), "jpeg", quality=92)
        )
        mask = random_mask(size, size, i, max_coverage=0.25).astype(np.uint8) * 255
        (folder / f"{i}_mask.png").write_bytes(codec.encode_image(np.dstack([mask] * 3)))
        ids.append(f"row-{i:05d}")
        imgs.append(f"{i}.jpg")
        msks.append(f"{i}_mask.png")
    return pa.table({"id": ids, "image": imgs, "mask": msks})


def w6(args) -> rec.Record:
    device, inp, model, name = gpu_setup(args, "w6")
    b = args.batch or 8
    apply_variant(inp, Variant(f"sdpa_b{b}_cl", batch=b, channels_last=True))
    size = args.size or 512
    rows = args.rows or 64
    threads = args.threads or min(8, rec.cores())
    tmp = Path(tempfile.mkdtemp(prefix="bench-w6-"))
    manifest = write_inputs(tmp, rows, size)
    cfg = JobConfig(manifest=str(tmp / "m.parquet"), output=str(tmp / "out"), backend="diffusers",
                    device=device, steps=args.steps or 50, batch_size=b, mode="full",
                    output_format="png", png_compress_level=1)  # fmt: skip
    ctx = JobContext(config=cfg, storage=Storage(StorageOptions()), manifest_base=str(tmp),
                     spec=inp.spec)  # fmt: skip
    stage = ModelStage(ctx, inpainter=inp)
    batches = [manifest.slice(i, b) for i in range(0, rows, b)]
    r = rec.Record("w6", f"{size}², batch {b}: GPU stage fed by {threads} stage threads vs model loop",
                   name, {"size": size, "rows": rows, "batch": b, "threads": threads,
                          "model": model, "steps": ctx.options.generation.num_inference_steps,
                          "output_format": "png/1"},
                   notes=[RAY_NOTE])  # fmt: skip
    finish_batch(stage(prepare_batch(batches[0], ctx)), ctx)  # warm-up, all three stages

    prepared = [prepare_batch(t, ctx) for t in batches]
    rec.sync(device)
    t0 = time.perf_counter()
    for t in prepared:
        stage(t)
    rec.sync(device)
    plain = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = run_threaded(batches, ctx, stage, threads)
    rec.sync(device)
    fed = time.perf_counter() - t0
    status = [s for t in out for s in t.column("status").to_pylist()]
    bad = sum(s != Status.OK for s in status)
    r.rows = [
        {"path": "model_loop", "rows": rows, "seconds": plain, "rows_per_s": rows / plain},
        {"path": "stages_threaded", "rows": rows, "seconds": fed, "rows_per_s": rows / fed,
         "rows_not_ok": bad},
    ]  # fmt: skip
    r.ratios["threaded_vs_model_loop"] = round(plain / fed, 3)
    r.goals = {"goal_ratio": 0.9, "met": plain / fed >= 0.9 and not bad}
    return r


def run_threaded(batches, ctx, stage, threads: int) -> list[pa.Table]:
    """prepare on a pool, the model stage in this thread in order, finish on a second pool."""
    with ThreadPoolExecutor(threads) as prep, ThreadPoolExecutor(threads) as fin:
        ready = [prep.submit(prepare_batch, t, ctx) for t in batches]
        done = [fin.submit(finish_batch, stage(f.result()), ctx) for f in ready]
        return [f.result() for f in done]
