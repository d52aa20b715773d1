"""What the model passes of a run cost: FLOPs per pass from the recorded architecture benchmark,
seconds per GPU type from a recorded GPU benchmark where one exists, else extrapolated from each
GPU's dense fp16 peak at an assumed utilisation, and CPU-core hours for the CPU backends from
their recorded rates; images/s per GPU and dollars per million images per backend family and
working size, from GPU records where they exist, else extrapolated from FLOPs. Every figure says
where it came from.

`python -m batch_inpaint.job.driver.cost [--gpu-hour-price 2.5]` prints the recorded GPU rates
and their cost per million images as a Markdown table (docs/benchmarks.md)."""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

from batch_inpaint.errors import ConfigError

RECORDS = Path(__file__).resolve().parents[3] / "bench" / "results"
# Dense (no sparsity) fp16 tensor-core peaks, TFLOP/s, from the vendors' data sheets (half of the
# "with sparsity" figure); A10G: AWS's variant of the A10, whose tensor rate AWS does not publish
# (the figure commonly reported for it).
GPUS = {"A10G": 70.0, "L4": 121.0, "A100": 312.0, "L40S": 362.0, "H100": 989.0, "H200": 989.0}
# The best published SD2 512² rates are 40% of an A100's peak (1.5 images/s compiled) and 17% of
# an H100's (2 images/s at batch 1); the project's W1 goal (4 images/s on an H100) is 34%.
ASSUMED_UTILISATION = 0.35
SD_UNET_512, SD_VAE_512 = 0.804, 3.632  # TFLOP per UNet forward and VAE encode+decode at 512²
LAMA_512 = 0.4418  # TFLOP per LaMa pass at 512² (convolutions; bench l1)
PX_512 = 512 * 512
# TFLOP per SDXL-inpainting UNet forward (2,567.5 M parameters, in_channels 9) by working side,
# counted by torch.utils.flop_counter on the meta device from the checkpoint's UNet config, as
# the arch record counts SD2's. Its VAE is SD2's architecture: the same VAE FLOPs.
SDXL_UNET = {512: 1.589, 768: 3.641, 1024: 6.762, 1536: 17.262, 2048: 35.909}
# Dollars per GPU-hour when none is given: a round figure, stated, not a quote.
DEFAULT_GPU_HOUR_PRICE = 2.0
# GPU records with images/s per working size: the workload -> the model family it ran.
FAMILY_OF_WORKLOAD = {"w1": "sd", "w5": "sd", "l2": "lama"}


def load_records(folder: str | os.PathLike | None = None) -> list[dict]:
    """Every benchmark record (bench/results/*.json, smoke runs left out), newest first."""
    out = []
    for path in glob.glob(str(Path(folder or RECORDS) / "*.json")):
        try:
            rec = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and not rec.get("smoke"):
            out.append({**rec, "_file": f"bench/results/{Path(path).name}"})
    return sorted(out, key=lambda r: str(r.get("started_at", "")), reverse=True)


def _latest(records: list[dict], workload: str, gpu: bool | None = None) -> dict | None:
    for r in records:
        on_cpu = str(r.get("device", "")).startswith("cpu")
        if r.get("workload") == workload and (gpu is None or gpu != on_cpu):
            return r
    return None


def gpu_type(device: str) -> str | None:
    """The GPUS key in a CUDA device name ('NVIDIA H100 80GB HBM3' -> 'H100')."""
    for name in sorted(GPUS, key=len, reverse=True):
        if name in device.upper():
            return name
    return None


class SDFlops:
    """TFLOP of one SD inpainting pass by working pixels: the arch record's UNet and VAE counts at
    several sizes, interpolated log-log (attention makes cost grow faster than pixels); without
    the record, 0.80 and 3.63 TFLOP at 512² scaled by pixel count."""

    def __init__(self, arch: dict | None, family: str | None = "sd"):
        self.family = family
        self.points: list[tuple[float, float, float]] = []
        self.source = "0.80 TFLOP per UNet forward at 512², scaled by pixel count (no arch record)"
        for row in (arch or {}).get("rows", []):
            what = str(row.get("what", ""))
            if "TFLOP/image" in what and "unet_forward" in row:
                w, h = (int(v) for v in what.split()[0].split("x"))
                vae = float(row.get("vae_decode", 0)) + float(row.get("vae_encode", 0))
                self.points.append((w * h, float(row["unet_forward"]), vae))
        self.points.sort()
        if len(self.points) >= 2:
            self.source = (
                f"UNet and VAE FLOPs measured at {len(self.points)} sizes ({arch['_file']})"
            )
        else:
            self.points = []
        if family == "sdxl":
            self.source = ("SDXL-inpainting UNet FLOPs counted at 5 sizes (estimate_cost.SDXL_UNET);"
                           f" VAE: {self.source}")  # fmt: skip

    def parts(self, pixels: int) -> tuple[float, float]:
        if not self.points:
            unet, vae = SD_UNET_512 * pixels / PX_512, SD_VAE_512 * pixels / PX_512
        else:
            unet = loglog([(x, u) for x, u, _ in self.points], pixels)
            vae = loglog([(x, v) for x, _, v in self.points], pixels)
        if self.family == "sdxl":
            unet = loglog([(side * side, f) for side, f in SDXL_UNET.items()], pixels)
        return unet, vae

    def per_pass(self, pixels: int, steps: int, guidance: float, strength: float) -> float:
        unet, vae = self.parts(pixels)
        forwards = max(1, int(steps * strength)) * (2 if guidance > 1 else 1)
        return forwards * unet + vae


def loglog(points: list[tuple[float, float]], x: float) -> float:
    """y at x on the log-log line through the two sorted points around x (the end ones outside)."""
    pts = sorted(points)
    i = max(1, min(len(pts) - 1, sum(1 for p in pts if p[0] < x)))
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    return y0 * (y1 / y0) ** (math.log(x / x0) / math.log(x1 / x0))


def parse_prices(text: str | None) -> dict[str, float]:
    """'3.5' (every GPU type) or 'h100=3.5,a100=2' -> {'*': 3.5} / {'H100': 3.5, 'A100': 2.0}."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in str(text).split(","):
        name, _, value = part.strip().rpartition("=")
        key = name.strip().upper() or "*"
        if key != "*" and key not in GPUS:
            raise ConfigError(f"--gpu-hour-price: unknown GPU type {name.strip()!r}; known: "
                              f"{', '.join(GPUS)} (or one price for all: --gpu-hour-price 2.5)")  # fmt: skip
        try:
            out[key] = float(value)
        except ValueError:
            raise ConfigError(f"--gpu-hour-price: {value.strip()!r} is not a price per GPU-hour "
                              "(e.g. 2.5, or h100=3.5,a100=2)") from None  # fmt: skip
        if out[key] < 0:
            raise ConfigError(f"--gpu-hour-price: {part.strip()!r} is negative")
    return out


def gpu_table(tflop_per_row: float, rows: int, records: list[dict], gpus_used: int,
              prices: dict[str, float], workload: str = "w1") -> dict:  # fmt: skip
    """Seconds per row, rows/s, GPU-hours (and cost) per GPU type for `rows` rows."""
    measured: dict[str, tuple[float, str]] = {}  # GPU type -> (effective TFLOP/s, record)
    for r in records:
        kind = gpu_type(str(r.get("device", "")))
        if r.get("workload") != workload or not kind or kind in measured:
            continue
        ok = [x for x in r.get("rows", []) if x.get("images_per_s") and x.get("tflop_per_image")]
        if ok:
            best = max(ok, key=lambda x: x["images_per_s"])
            measured[kind] = (best["images_per_s"] * best["tflop_per_image"], r["_file"])
    util = ASSUMED_UTILISATION
    util_source = f"assumed {util:.0%} of the dense fp16 peak (no GPU benchmark record yet)"
    if measured:
        fractions = {k: v[0] / GPUS[k] for k, v in measured.items()}
        util = sum(fractions.values()) / len(fractions)
        util_source = (f"{util:.0%} of peak, as measured on " + ", ".join(sorted(measured)) +
                       f" ({', '.join(sorted(v[1] for v in measured.values()))})")  # fmt: skip
    out = []
    for name, peak in GPUS.items():
        rate, source = (measured[name][0], f"measured ({measured[name][1]})") if name in measured \
            else (peak * util, f"extrapolated from FLOPs: {peak:g} TFLOP/s peak × {util:.0%}")  # fmt: skip
        s_row = tflop_per_row / rate if rate else 0.0
        hours = rows * s_row / 3600
        price = prices.get(name, prices.get("*"))
        out.append({"gpu": name, "peak_tflops": peak, "source": source,
                    "seconds_per_row": round(s_row, 4),
                    "rows_per_s": round(1 / s_row, 3) if s_row else None,
                    "gpu_hours": sig(hours), "wall_hours": sig(hours / gpus_used),
                    "price_per_gpu_hour": price,
                    "cost": sig(hours * price) if price is not None else None})  # fmt: skip
    return {"utilisation": round(util, 3), "utilisation_source": util_source,
            "gpus_used": gpus_used, "rows": out}  # fmt: skip


def sig(x: float, digits: int = 3) -> float:
    """`x` to `digits` significant digits (hours of a small run are not 0.0)."""
    return float(f"{x:.{digits}g}") if x else 0.0


def cpu_rate(backend: str, records: list[dict]) -> tuple[float | None, str]:
    """Rows per second per CPU core at 512² for a CPU backend, and the record it came from."""
    if backend == "opencv":  # the job's own stages on one core from local files (c2)
        for rec in (r for r in records if r.get("workload") == "c2"):
            rows = [x for x in rec.get("rows", []) if x.get("path") in ("stage_loop", "plain_loop")
                    and x.get("source", "files") == "files"]  # fmt: skip
            if rows:  # CPU seconds a row where recorded: a busy machine's wall time misleads
                cpu = rows[0].get("cpu_s_per_row")
                rate = 1 / float(cpu) if cpu else float(rows[0]["rows_per_s"])
                return rate, f"{rec['_file']} (the job's stages, one core, 512²)"
    if backend == "lama":
        rec = _latest(records, "l1", gpu=False)
        rows = [x for x in (rec or {}).get("rows", []) if x.get("size") == 512]
        if rows:
            best = max(float(x["images_per_s_per_core"]) for x in rows)
            return best, f"{rec['_file']} (512², per core)"
    return None, "no CPU benchmark record for this backend"


def price_for(prices: dict[str, float], gpu: str) -> tuple[float, str]:
    """(dollars per GPU-hour, where the figure came from) for a GPU type."""
    price = prices.get(gpu, prices.get("*"))
    if price is not None:
        return price, "--gpu-hour-price"
    return DEFAULT_GPU_HOUR_PRICE, (f"a stated ${DEFAULT_GPU_HOUR_PRICE:g}/GPU-hour, not a quote "
                                    "(--gpu-hour-price sets yours)")  # fmt: skip


def per_million(images_per_s: float, price: float) -> float:
    """Dollars for a million images at `images_per_s` on one GPU of `price` per hour."""
    return sig(1e6 / images_per_s / 3600 * price) if images_per_s else 0.0


def measured_rates(records: list[dict]) -> dict[tuple, dict]:
    """(family, side, GPU type, steps) -> the best images/s on one GPU of the newest GPU record
    that has it (w1, w5: SD2 at a side and a number of steps; l2: LaMa, steps None)."""
    out: dict[tuple, dict] = {}
    for r in records:  # newest first: a key an earlier (newer) record gave is kept
        family = FAMILY_OF_WORKLOAD.get(str(r.get("workload")))
        kind = gpu_type(str(r.get("device", "")))
        if not family or not kind or str(r.get("device", "")).startswith("cpu"):
            continue
        mine: dict[tuple, dict] = {}
        for row in r.get("rows", []):
            ips = row.get("images_per_s")
            if not ips or row.get("error"):
                continue
            side = int(row.get("side") or (r.get("config") or {}).get("size") or 512)
            steps = row.get("steps") if family == "sd" else None
            key = (family, side, kind, steps)
            what = row.get("variant") or f"{row.get('dtype')} batch {row.get('batch')}"
            if key not in mine or ips > mine[key]["images_per_s"]:
                mine[key] = {"images_per_s": float(ips), "record": r["_file"], "best": what}
        out.update({k: v for k, v in mine.items() if k not in out})
    return out


def size_costs(family: str | None, sizes: list[tuple[int, int]], tflop_of, steps: int | None,
               util: float, records: list[dict], prices: dict[str, float]) -> list[dict]:  # fmt: skip
    """Per working size and GPU type: images/s per GPU and dollars per million images, measured
    where a GPU record has that family, square size (and steps), else extrapolated from FLOPs
    (`tflop_of(w, h)` per image at the peak × `util`)."""
    measured = measured_rates(records)
    out = []
    for w, h in sizes:
        tflop = tflop_of(w, h)
        for gpu, peak in GPUS.items():
            m = measured.get((family, w, gpu, steps)) if w == h else None
            if m:
                ips, source = m["images_per_s"], f"measured ({m['record']}, {m['best']})"
            else:
                ips = peak * util / tflop if tflop else 0.0
                source = (f"extrapolated from FLOPs: {tflop:.3g} TFLOP per image at "
                          f"{peak:g} TFLOP/s × {util:.0%}")  # fmt: skip
            price, price_source = price_for(prices, gpu)
            out.append({"size": f"{w}x{h}", "gpu": gpu, "images_per_s_per_gpu": sig(ips),
                        "usd_per_million_images": per_million(ips, price),
                        "price_per_gpu_hour": price, "price_source": price_source,
                        "source": source})  # fmt: skip
    return out


def markdown_table(records: list[dict], prices: dict[str, float]) -> str:
    """The recorded GPU rates and their cost per million images, for docs/benchmarks.md."""
    names = {"sd": "diffusers (SD2)", "lama": "lama"}
    lines = ["| backend | working size | steps | GPU | best | images/s per GPU | $/GPU-hour "
             "| $ per million images | record |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    rates = measured_rates(records)
    for (family, side, gpu, steps), m in sorted(rates.items(), key=lambda kv: str(kv[0])):
        price, _ = price_for(prices, gpu)
        lines.append(f"| {names.get(family, family)} | {side}² | {steps or '–'} | {gpu} | "
                     f"{m['best']} | {sig(m['images_per_s'])} | {price:g} | "
                     f"{per_million(m['images_per_s'], price):,.0f} | {m['record']} |")  # fmt: skip
    if not rates:
        return ("No GPU benchmark record yet (bench/results/ holds CPU ones only): the dry run's "
                "figures per GPU are extrapolated from FLOPs.")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="recorded GPU rates and cost per million images")
    ap.add_argument("--gpu-hour-price", default=None, help="2.5, or h100=3.5,a100=2")
    ap.add_argument("--records", default=None, help="folder of records (bench/results/)")
    args = ap.parse_args()
    print(markdown_table(load_records(args.records), parse_prices(args.gpu_hour_price)))
