"""What the model passes of a run cost: FLOPs per pass from the recorded architecture benchmark,
seconds per GPU type from a recorded GPU benchmark where one exists, else extrapolated from each
GPU's dense fp16 peak at an assumed utilisation, and CPU-core hours for the CPU backends from
their recorded rates. Every figure says where it came from."""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

from batch_inpaint.errors import ConfigError

RECORDS = Path(__file__).resolve().parents[2] / "bench" / "results"
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

    def __init__(self, arch: dict | None):
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

    def parts(self, pixels: int) -> tuple[float, float]:
        if not self.points:
            return SD_UNET_512 * pixels / PX_512, SD_VAE_512 * pixels / PX_512
        pts = self.points
        i = max(1, min(len(pts) - 1, sum(1 for p in pts if p[0] < pixels)))
        (x0, u0, v0), (x1, u1, v1) = pts[i - 1], pts[i]
        t = math.log(pixels / x0) / math.log(x1 / x0)
        return u0 * (u1 / u0) ** t, v0 * (v1 / v0) ** t

    def per_pass(self, pixels: int, steps: int, guidance: float, strength: float) -> float:
        unet, vae = self.parts(pixels)
        forwards = max(1, int(steps * strength)) * (2 if guidance > 1 else 1)
        return forwards * unet + vae


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
    if backend == "opencv":
        rec = _latest(records, "c2")
        rows = [x for x in (rec or {}).get("rows", []) if x.get("path") == "plain_loop"]
        if rows:
            return float(rows[0]["rows_per_s"]), f"{rec['_file']} (plain loop, one core, 512²)"
    if backend == "lama":
        rec = _latest(records, "l1", gpu=False)
        rows = [x for x in (rec or {}).get("rows", []) if x.get("size") == 512]
        if rows:
            best = max(float(x["images_per_s_per_core"]) for x in rows)
            return best, f"{rec['_file']} (512², per core)"
    return None, "no CPU benchmark record for this backend"
