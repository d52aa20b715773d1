"""Benchmarks for batch-inpaint: `python -m bench WORKLOAD [options]`, `python -m bench smoke`.

Each run prints a table and writes one JSON record to bench/results/ (device, versions, workload,
configuration, images/s, seconds/image, peak GPU memory, ratios measured side by side in the same
process on the same inputs). docs/benchmarks.md says what each workload measures and how to rerun it.
Nothing here runs in the test suite except `smoke` (tests/test_bench.py).
"""

from __future__ import annotations

# name -> (module:function, needs a GPU, what it measures)
WORKLOADS = {
    "arch": ("sd2:arch", False, "SD2-inpainting architecture: parameter counts and FLOP per image"),
    "w1": ("gpu_model:w1", True, "512², 50 steps: card config vs best (images/s, % of peak)"),
    "w2": ("gpu_model:w2", True, "25 DPM++ steps vs 50 default steps, per image"),
    "w3": ("gpu_model:w3", True, "1920x1080 full frame: slicing vs SDPA + VAE tiling"),
    "w4": ("gpu_pipeline:w4", True, "1920x1080, masks <= 10%: crop vs full mode per image"),
    "w5": ("gpu_model:w5", True, "size sweep 512²..2048²: time and peak memory, plotted"),
    "w6": ("gpu_pipeline:w6", True, "GPU stage fed by prepare/finish threads vs model loop"),
    "c1": ("cpu_stages:c1", False, "CPU stages per core, per size and encoding; cores per GPU"),
    "c2": ("cpu_job:c2", False, "whole Ray job (opencv) vs plain single-process loop"),
    "crop": ("crop:crop", False, "crop mode on 1080p/4K photos, small masks: CPU per row, cores"),
    "c3": ("c3:c3", False, "scale: 100k rows through local Ray; driver memory; planning 10 M"),
    "s1": (
        "shards:s1",
        False,
        "100k rows as files, Parquet and WebDataset shards: rows/s, objects, LIST",
    ),
    "sd2-job": ("sd2_job:sd2_job", False, "full-size SD2 (random) through run_job on the CPU"),
    "l1": ("lama:l1", False, "LaMa on the CPU: images/s per core at 512² and 1024²"),
    "l2": ("lama:l2", True, "LaMa 512² batch sweep fp32/bf16; 100 images/s goal; vs w1"),
    "d1": ("detect:d1", False, "detection on the CPU: seconds per 512² row per provider"),
    "d2": ("detect:d2", True, "detection throughput at 512²: Grounding DINO, PP-OCR, SAM"),
    "d3": ("detect:d3", False, "shipped text detector, real weights: rows/s per core, 512², 1080p"),
    "e1": ("executors:e1", False, "`run` end to end on 20 and 200 rows of 512²: local vs ray"),
    "j1": ("gpu_job:j1", True, "`batch-inpaint run` itself: sd2, lama, text detect; vs loop"),
}


def resolve(name: str):
    """The workload function for a name in WORKLOADS."""
    import importlib

    target = WORKLOADS[name][0]
    module, func = target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)
