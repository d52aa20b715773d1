"""GPU workloads at the model level (fp16, through DiffusersInpainter.inpaint):

- w1: 512², 50 steps, guidance 7.5: the model card's setup (attention slicing, batch 1, eager)
  against the best we can do (SDPA, batch >= 8, channels-last, torch.compile / CUDA graphs).
- w2: DPM++ multistep at 25 steps against w1's default scheduler at 50, per image.
- w3: 1920x1080 full frame, batch 1: slicing against SDPA + VAE tiling (time and peak memory).
- w5: size sweep 512²...2048²: time and peak memory per configuration, plotted.

Every variant of a workload runs in one process on the same loaded weights and the same inputs,
so the ratios are side by side. Each refuses to run without CUDA unless given --device cpu --tiny.
"""

from __future__ import annotations

import numpy as np

from batch_inpaint.image.masks import random_mask
from batch_inpaint.models.base import is_out_of_memory
from batch_inpaint.params import GenerationParams

from . import record as rec
from .sd2 import CARD, Variant, apply_variant, image_tflop, load_model


def gpu_setup(args, workload: str):
    """(device, inpainter, model info, device name); refuses a CPU unless it was asked for with a
    small model (--device cpu --tiny, or --model DIR)."""
    device = rec.resolve_device(args.device)
    if not device.startswith("cuda") and not (args.device == "cpu" and (args.tiny or args.model)):
        raise rec.NeedsGPU(workload)
    if device == "cpu":
        import torch

        torch.set_num_threads(1)  # the tiny model only waits on a second thread (fixtures_models)
    inp, model = load_model(args, device)
    return device, inp, model, rec.device_name(device)


def inputs(n: int, height: int, width: int, seed: int = 0):
    """n photo-like images with LaMa-style masks (0/255 uint8); the same for every variant."""
    images = [rec.sample_image(height, width, seed + i) for i in range(n)]
    masks = [random_mask(height, width, seed + i).astype(np.uint8) * 255 for i in range(n)]
    return images, masks


def run_variant(inp, v: Variant, params, images, masks, device: str, warmup: int, repeats: int,
                warmup_steps: int | None = None) -> dict:  # fmt: skip
    """One row: seconds per image, images/s and peak GPU memory of `v` on the first v.batch inputs.
    An out-of-memory run becomes a row saying so."""
    apply_variant(inp, v)
    n = v.batch
    imgs = [images[i % len(images)] for i in range(n)]
    msks = [masks[i % len(masks)] for i in range(n)]

    def call(p=params):
        return inp.inpaint(imgs, msks, p, [p.prompt] * n, [p.negative_prompt] * n, list(range(n)))

    row = {"variant": v.name, "batch": n, "steps": params.num_inference_steps}
    try:
        if warmup_steps:  # compile, autotune and allocate at a few steps, then time the real run
            short = params.with_overrides(num_inference_steps=warmup_steps)
            for _ in range(warmup):
                call(short)
            warmup = 0
        sec, peak = rec.timed(call, device, warmup, repeats)
    except Exception as exc:  # noqa: BLE001 - an OOM or a compiler failure is a result
        if not (is_out_of_memory(exc) or v.compile):
            raise
        rec.reset_peak(device)
        what = "out of GPU memory" if is_out_of_memory(exc) else f"{type(exc).__name__}: {exc}"
        return {**row, "error": what[:300]}
    return {**row, "s_per_image": sec / n, "images_per_s": n / sec, "peak_gpu_gib": peak}


def add_flops(row: dict, h: int, w: int, peak: float | None, guidance: bool = True) -> dict:
    tf = image_tflop(h, w, row["steps"], guidance)
    row["tflop_per_image"] = round(tf, 2)
    if peak and row.get("images_per_s"):
        row["fraction_of_peak"] = round(row["images_per_s"] * tf / peak, 4)
    return row


def _params(args, steps: int, **kw) -> GenerationParams:
    return GenerationParams(num_inference_steps=args.steps or steps, guidance_scale=7.5, **kw)


def w1(args) -> rec.Record:
    device, inp, model, name = gpu_setup(args, "w1")
    size = args.size or 512
    b = args.batch or 8
    variants = [
        CARD,
        Variant("sdpa_b1"),
        Variant(f"sdpa_b{b}_cl", batch=b, channels_last=True),
        Variant(f"sdpa_b{b}_cl_compile", batch=b, channels_last=True, compile="default"),
        Variant(f"sdpa_b{b}_cl_cudagraphs", batch=b, channels_last=True, compile="reduce-overhead"),
    ]
    variants = _select(variants, args)
    params = _params(args, 50)
    images, masks = inputs(max(v.batch for v in variants), size, size)
    peak = rec.peak_tflops(name)
    r = rec.Record("w1", f"{size}², {params.num_inference_steps} steps, guidance 7.5: card vs best",
                   name, {"size": size, "dtype": str(inp.dtype), "model": model,
                          "warmup": args.warmup, "repeats": args.repeats,
                          "variants": [v.describe() for v in variants],
                          "peak_tflops_fp16_dense": peak})  # fmt: skip
    for v in variants:
        warm = max(args.warmup, 2) if v.compile else args.warmup
        row = run_variant(inp, v, params, images, masks, device, warm, args.repeats)
        r.rows.append(add_flops(row, size, size, peak))
    ok = [x for x in r.rows if x.get("images_per_s")]
    card = next((x for x in ok if x["variant"] == "card"), None)
    best = max(
        (x for x in ok if x["variant"] != "card"), key=lambda x: x["images_per_s"], default=None
    )
    if card and best:
        r.ratios["best_vs_card_images_per_s"] = round(
            best["images_per_s"] / card["images_per_s"], 3
        )
        r.ratios["best_variant"] = best["variant"]
    if best:
        r.goals = {
            "goal_images_per_s": rec.GOAL_W1_IMAGES_PER_S,
            "best_images_per_s": round(best["images_per_s"], 3),
            "met": best["images_per_s"] >= rec.GOAL_W1_IMAGES_PER_S,
            "best_published_images_per_s": rec.BEST_PUBLISHED_IMAGES_PER_S,
            "physical_limit_images_per_s": round(peak / best["tflop_per_image"], 2)
            if peak
            else None,
        }
    return r


def w2(args) -> rec.Record:
    device, inp, model, name = gpu_setup(args, "w2")
    size = args.size or 512
    b = args.batch or 8
    v = Variant(f"sdpa_b{b}_cl", batch=b, channels_last=True,
                compile="default" if args.compile else None)  # fmt: skip
    images, masks = inputs(b, size, size)
    peak = rec.peak_tflops(name)
    runs = [("default_50", _params(args, 50)), ("dpm++_25", _params(args, 25, scheduler="dpm++"))]
    if args.steps:  # a smoke run: keep the 2:1 step ratio
        runs = [("default", _params(args, 50)),
                ("dpm++_half", GenerationParams(num_inference_steps=max(1, args.steps // 2),
                                                scheduler="dpm++"))]  # fmt: skip
    r = rec.Record("w2", f"{size}²: DPM++ multistep at half the steps vs the default scheduler",
                   name, {"size": size, "variant": v.describe(), "model": model,
                          "scheduler_default": type(inp.pipe.scheduler).__name__})  # fmt: skip
    for label, p in runs:
        warm = max(args.warmup, 2) if v.compile else args.warmup
        row = run_variant(inp, v, p, images, masks, device, warm, args.repeats)
        row.update(schedule=label, scheduler=p.scheduler)
        r.rows.append(add_flops(row, size, size, peak))
    a, c = r.rows
    if a.get("s_per_image") and c.get("s_per_image"):
        r.ratios["dpm25_vs_default50_s_per_image"] = round(c["s_per_image"] / a["s_per_image"], 3)
        r.ratios["speedup"] = round(a["s_per_image"] / c["s_per_image"], 3)
    r.notes.append("Quality at 25 DPM++ steps is not measured here (random weights).")
    return r


def w3(args) -> rec.Record:
    device, inp, model, name = gpu_setup(args, "w3")
    w, h = (args.width or 1920), (args.height or 1080)
    variants = _select([CARD, Variant("sdpa"), Variant("sdpa_vae_tiling", vae_tiling=True)], args)
    params = _params(args, 50)
    images, masks = inputs(1, h, w)
    peak = rec.peak_tflops(name)
    r = rec.Record("w3", f"{w}x{h} full frame, batch 1: slicing vs SDPA + VAE tiling", name,
                   {"width": w, "height": h, "model": model,
                    "variants": [v.describe() for v in variants]})  # fmt: skip
    for v in variants:
        row = run_variant(
            inp, v, params, images, masks, device, args.warmup, args.repeats, warmup_steps=2
        )
        r.rows.append(add_flops(row, h, w, peak))
    by = {x["variant"]: x for x in r.rows if x.get("s_per_image")}
    if "card" in by and "sdpa_vae_tiling" in by:
        c, t = by["card"], by["sdpa_vae_tiling"]
        r.ratios["tiling_vs_card_time"] = round(t["s_per_image"] / c["s_per_image"], 3)
        if c["peak_gpu_gib"]:
            r.ratios["tiling_vs_card_peak_memory"] = round(t["peak_gpu_gib"] / c["peak_gpu_gib"], 3)
    r.goals = {"model_card_claim": "fp16 + slicing fits 1920x1080 in 16 GB",
               "card_peak_gpu_gib": by.get("card", {}).get("peak_gpu_gib")}  # fmt: skip
    return r


def w5(args) -> rec.Record:
    device, inp, model, name = gpu_setup(args, "w5")
    sides = args.sizes or [512, 768, 1024, 1536, 2048]
    variants = _select([CARD, Variant("sdpa"), Variant("sdpa_vae_tiling", vae_tiling=True)], args)
    params = _params(args, 20)
    peak = rec.peak_tflops(name)
    r = rec.Record(
        "w5",
        f"size sweep, batch 1, {params.num_inference_steps} steps",
        name,
        {"sides": sides, "model": model, "variants": [v.describe() for v in variants]},
    )
    for side in sides:
        images, masks = inputs(1, side, side)
        for v in variants:
            row = run_variant(
                inp, v, params, images, masks, device, args.warmup, args.repeats, warmup_steps=2
            )
            row["side"] = side
            if row.get("s_per_image"):
                row["s_per_step"] = row["s_per_image"] / params.num_inference_steps
            r.rows.append(add_flops(row, side, side, peak))
            print(rec.table([row]).splitlines()[-1], flush=True)
    plot = plot_w5(r, _plot_path(args.results_dir or rec.RESULTS_DIR, r))
    r.config["plot"] = str(plot) if plot else None
    if not plot:
        r.notes.append("No plot: matplotlib is not installed here; `python -m bench plot RECORD`.")
    r.notes.append(
        f"Per-image time at {params.num_inference_steps} steps; scale s_per_step for 50."
    )
    return r


def plot_w5(r: rec.Record, path):
    """seconds/image and peak GPU memory against the side, one line per variant; None if
    matplotlib is missing (the GPU machines don't have it: plot the record elsewhere)."""
    ys = [("s_per_image", "seconds / image")]
    if any(x.get("peak_gpu_gib") for x in r.rows):
        ys.append(("peak_gpu_gib", "peak GPU memory, GiB"))
    try:
        return rec.plot_sweep(r, path, "side", "variant", ys)
    except ImportError:
        return None


def _plot_path(folder, r: rec.Record):
    from pathlib import Path

    stamp = r.started_at.replace(":", "").replace("-", "").split("+")[0]
    return Path(folder) / f"{r.workload}_{rec.slug(r.device)}_{stamp}.png"


def _select(variants: list[Variant], args) -> list[Variant]:
    """--variants a,b keeps those names; --quick drops the compiled ones (minutes to compile)."""
    if args.variants:
        keep = set(args.variants.split(","))
        variants = [v for v in variants if v.name in keep]
    if args.quick or not rec.resolve_device(args.device).startswith("cuda"):
        variants = [v for v in variants if not v.compile]
    return variants
