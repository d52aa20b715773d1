"""What every workload shares: the device and versions it ran on, timing, peak memory, sample
inputs, the JSON record written per run, the printed table and the size-sweep plot."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "batch-inpaint-bench/1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets. The first
# key found in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_TFLOPS_FP16 = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "V100": 125.0,
    "T4": 65.0,
}
GOAL_W1_IMAGES_PER_S = 4.0  # 512², 50 steps, per GPU
# Best published 50-step 512² rates: ~1.5 images/s on an A100 (compiled, batch 16) and
# 1.75-2 on an H100 (batch 1; the upper figure here).
BEST_PUBLISHED_IMAGES_PER_S = {"A100": 1.5, "H100": 2.0}


class NeedsGPU(SystemExit):
    """Raised by a GPU workload on a machine without CUDA: a clear message, exit status 2."""

    def __init__(self, workload: str):
        super().__init__(
            f"{workload} measures a CUDA GPU, and torch.cuda.is_available() is False here. "
            f"Run it on a GPU machine (python -m bench {workload}), or add '--device cpu --tiny' "
            "for a smoke run of the harness (its numbers mean nothing)."
        )
        self.code = 2


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_name(device: str) -> str:
    """'NVIDIA H100 80GB HBM3' for a GPU; 'cpu: <model name>, N cores' for the CPU."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {cpu_name()}, {cores()} cores"


def peak_tflops(name: str) -> float | None:
    for key, tf in PEAK_TFLOPS_FP16.items():
        if key in name:
            return tf
    return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for mod in (
        "batch_inpaint",
        "torch",
        "diffusers",
        "transformers",
        "ray",
        "numpy",
        "PIL",
        "cv2",
    ):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - a missing package is recorded as None
            out[mod] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cuda"] = torch.version.cuda
    return out


def resolve_device(device: str | None) -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def timed(fn, device: str, warmup: int, repeats: int) -> tuple[float, float | None]:
    """Mean seconds of `repeats` calls after `warmup` untimed ones, and peak GPU GiB over them."""
    for _ in range(warmup):
        fn()
    reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats, peak_gib(device)


def sample_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like RGB uint8 image: smooth colour fields, edges and sensor noise. Encoders and
    decoders cost about what they cost on photographs, which noise or flat colour would not."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    for _ in range(6):  # a few hard-edged shapes
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(max(2, min(height, width) // 20), max(3, min(height, width) // 4)))
        cv2.circle(img, (x, y), r, c, -1)
    img += rng.normal(0.0, 4.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class Record:
    """One run of one workload: what ran where, every measured row, and the side-by-side ratios."""

    workload: str
    title: str
    device: str
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, Any] = field(default_factory=dict)
    goals: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    proxy: bool = False
    smoke: bool = False
    schema: str = SCHEMA
    versions: dict[str, Any] = field(default_factory=versions)
    started_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )
    command: str = field(default_factory=lambda: "python -m bench " + shlex.join(sys.argv[1:]))
    load_average: list[float] = field(default_factory=lambda: list(os.getloadavg()))
    load_average_end: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def write(self, results_dir: str | os.PathLike | None = None) -> Path:
        """bench/results/<workload>_<device>_<time>.json (and nothing else); returns the path."""
        self.load_average_end = list(os.getloadavg())  # others' work on a shared machine shows here
        folder = Path(results_dir) if results_dir else RESULTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stamp = self.started_at.replace(":", "").replace("-", "").split("+")[0]
        path = folder / f"{self.workload}_{slug(self.device)}_{stamp}.json"
        path.write_text(json.dumps(asdict(self), indent=2, default=_json_default) + "\n")
        return path


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return str(v)


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain fixed-width table of the rows (every key, in first-seen order, unless given)."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot_sweep(record: Record, path: Path, x: str, series: str, ys: list[tuple[str, str]]) -> Path:
    """One panel per y column against `x`, one line per value of `series` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ys), figsize=(5 * len(ys), 4), squeeze=False)
    for ax, (col, label) in zip(axes[0], ys, strict=True):
        for name in dict.fromkeys(r[series] for r in record.rows):
            pts = [(r[x], r[col]) for r in record.rows if r[series] == name and r.get(col)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=str(name))
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{record.title}\n{record.device}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
