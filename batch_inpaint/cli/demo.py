"""`batch-inpaint demo`: the main job on the bundled samples, on a local Ray instance, into a local
folder, then a side-by-side picture (input | mask | output) per sample.

It runs the best backend this machine can run without a network, and says which and why:
SD2-inpainting when its weights are here (--model DIR, or the Hugging Face cache) and there is a
GPU; else LaMa when spandrel is installed and big-lama weights are here (--model FILE, or
~/.cache/batch-inpaint/models/big-lama.safetensors); else OpenCV's classical fill. The tiny random
checkpoint (--backend tiny) runs every stage of the product too, but its fills are noise: it is
shown with the banner "random weights: noise expected"."""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from batch_inpaint.errors import ConfigError
from batch_inpaint.models.spec import BACKENDS as MODEL_BACKENDS
from batch_inpaint.models.spec import DEFAULT_MODEL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BANNER = "random weights: noise expected"
SD2_ID = DEFAULT_MODEL
LAMA_FILE = "big-lama.safetensors"  # looked for in the model cache (docs/models.md converts it)
BACKENDS = ("auto", *MODEL_BACKENDS)


@dataclass(frozen=True)
class Probe:
    """What this machine offers the demo: a GPU, spandrel, SD2 weights, big-lama weights."""

    gpu: bool
    spandrel: bool
    sd2_dir: Path | None
    lama_file: Path | None

    @classmethod
    def here(cls) -> Probe:
        return cls(_has_gpu(), importlib.util.find_spec("spandrel") is not None,
                   find_sd2(), find_big_lama())  # fmt: skip


@dataclass(frozen=True)
class Choice:
    backend: str
    model: str | None
    why: str  # why this backend
    banner: str | None = None  # shown wherever the pictures are: random weights
    hints: tuple[str, ...] = ()  # what a better backend would need here

    def headline(self) -> str:
        model = f" ({self.model})" if self.model else ""
        return f"backend {self.backend}{model}: {self.why}"


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def find_sd2() -> Path | None:
    """The SD2-inpainting snapshot in the Hugging Face cache, if one is complete there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(SD2_ID, "model_index.json")
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return folder if _is_diffusers_dir(folder) else None


def find_big_lama() -> Path | None:
    from batch_inpaint.storage.model_cache import default_cache_dir

    path = default_cache_dir() / LAMA_FILE
    return path if path.is_file() else None


def _is_diffusers_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file() and any((path / "unet").glob("*.safetensors"))


def _random_weights(backend: str, model: str | None) -> bool:
    from batch_inpaint.models.lama_tiny import is_tiny_lama_dir
    from batch_inpaint.models.tiny import is_tiny_model_dir

    if backend == "tiny":
        return True
    if not model:
        return False
    path = Path(model)
    folder = path if path.is_dir() else path.parent
    return is_tiny_model_dir(folder) or is_tiny_lama_dir(folder)


def _chosen(backend: str, model: str | None, why: str) -> Choice:
    return Choice(backend, model, why, BANNER if _random_weights(backend, model) else None)


def choose_backend(backend: str = "auto", model: str | None = None,
                   probe: Probe | None = None) -> Choice:  # fmt: skip
    """The backend the demo runs and why. 'auto' takes the best one that can run here."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "tiny":
        return _chosen("tiny", model, "the tiny random checkpoint, for tests")
    if backend == "opencv":
        return _chosen("opencv", None, "classical fill (cv2.inpaint), asked for")
    probe = probe or Probe.here()
    if backend == "diffusers":
        given = model or (str(probe.sd2_dir) if probe.sd2_dir else SD2_ID)
        return _chosen("diffusers", given, "asked for" + ("" if probe.gpu else "; no GPU: slow"))
    if backend == "lama":
        given = model or (str(probe.lama_file) if probe.lama_file else None)
        if given is None:
            raise ConfigError(f"--backend lama: no weights; pass --model FILE or put {LAMA_FILE} "
                              f"in {_lama_home()} (docs/models.md converts them)")  # fmt: skip
        return _chosen("lama", given, "asked for")
    return _auto(model, probe)


def _auto(model: str | None, probe: Probe) -> Choice:
    if model:  # the weights given decide which backend they are for
        given = Path(model)
        sd2 = given if _is_diffusers_dir(given) else None
        lama = given if sd2 is None and _is_lama_weights(given) else None
        if sd2 is None and lama is None:
            raise ConfigError(f"--model {model}: neither a diffusers folder (model_index.json, "
                              "unet/*.safetensors) nor LaMa weights (.safetensors, .pth, .ckpt)")  # fmt: skip
    else:
        sd2, lama = probe.sd2_dir, probe.lama_file
    if sd2 is not None and probe.gpu:
        return _chosen("diffusers", str(sd2), "SD2-inpainting weights and a GPU are here")
    if lama is not None and probe.spandrel:
        return _chosen("lama", str(lama), "LaMa weights are here and spandrel is installed")
    missed = [
        "SD2: weights here, but no GPU (--backend diffusers runs them on the CPU, slowly)"
        if sd2 is not None else
        f"SD2: no weights ({SD2_ID} is not in the Hugging Face cache; or --model DIR)",
        "LaMa: spandrel is not installed (pip install 'batch-inpaint[lama]')"
        if not probe.spandrel else
        f"LaMa: no weights ({LAMA_FILE} is not in {_lama_home()}; or --model FILE)",
    ]  # fmt: skip
    return Choice("opencv", None, "classical fill (cv2.inpaint), the best that runs here",
                  hints=tuple(missed))  # fmt: skip


def _is_lama_weights(path: Path) -> bool:
    from batch_inpaint.models.lama_weights import WEIGHT_SUFFIXES

    files = [path] if path.is_file() else list(path.iterdir()) if path.is_dir() else []
    return any(f.suffix.lower() in WEIGHT_SUFFIXES for f in files)


def _lama_home() -> str:
    from batch_inpaint.storage.model_cache import default_cache_dir

    return str(default_cache_dir())


def add_parser(sub) -> None:
    from batch_inpaint.cli.flags import examples

    tail = examples(
        "batch-inpaint demo    # the best backend this machine runs offline, into demo-output/",
        "batch-inpaint demo --backend opencv --no-text-pass --output /tmp/demo",
        "batch-inpaint demo --backend lama --model big-lama.safetensors",
    )["epilog"]  # the description is preformatted: RawDescription keeps both as written
    p = sub.add_parser("demo", help="run the job on the bundled samples (local Ray, no network)",
                       description=__doc__, epilog=tail,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--output", default="demo-output", help="local output folder (default: %(default)s)"
    )
    p.add_argument("--manifest", default=str(EXAMPLES / "manifest.parquet"), help="manifest to run")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: the best that runs here (default); diffusers: SD2 (--model DIR); "
                        "lama: LaMa (--model FILE); opencv: classical fill; tiny: random "
                        "weights, noise (for tests)")  # fmt: skip
    p.add_argument(
        "--model",
        default=None,
        help="local weights: a diffusers folder (SD2) or a LaMa .safetensors file",
    )
    p.add_argument("--steps", type=int, default=20, help="inference steps (default: %(default)s)")
    p.add_argument("--mode", default="crop", choices=("full", "crop"))
    p.add_argument("--no-text-pass", dest="text_pass", action="store_false",
                   help="skip the hands-free text pass (captions and watermarks on bundled photos, "
                   "found by the shipped text detector, no masks; cli/demo_text.py)")  # fmt: skip
    p.set_defaults(func=_demo)


def say(line: str) -> None:
    print(f"demo: {line}", flush=True)


def _say_choice(choice: Choice) -> None:
    say(choice.headline())
    for hint in choice.hints:
        say(f"  for better fills: {hint}")
    if choice.banner:
        say(f"*** {choice.banner.upper()} *** (the tiny checkpoint's weights are random: masked "
            "areas come out as noise; `batch-inpaint demo` without --backend picks a real fill)")  # fmt: skip


def _demo(args: argparse.Namespace) -> int:
    from batch_inpaint.cli import job_exit_status
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.run import run_job

    choice = choose_backend(args.backend, args.model)
    _say_choice(choice)
    out = Path(args.output).resolve()
    cfg = JobConfig(
        manifest=args.manifest,
        output=str(out),
        backend=choice.backend,
        model=choice.model,
        steps=args.steps,
        scheduler="dpm++" if choice.backend == "diffusers" and not choice.banner else "default",
        mode=args.mode,
        dilate=4,
        feather=4,
        resume=False,
        prune=True,  # the demo's folder shows this manifest only, whatever ran into it before
        progress_interval_s=5.0,
    )
    summary = run_job(cfg)
    summary = mark_report(out, summary, choice)
    sheets = side_by_side(out, choice)
    print()
    _say_choice(choice)
    say(f"{len(sheets)} side-by-side pictures (input | mask | output) in {out / 'side_by_side'}")
    say(f"open {out / 'report.html'} in a browser for the report")
    status = job_exit_status(summary)
    if args.text_pass:
        from batch_inpaint.cli.demo_text import text_pass

        text = text_pass(out, choice, args.steps, args.mode, mark_report, _captioned)
        status = status or job_exit_status(text)
    return status


def mark_report(out: Path, summary: dict, choice: Choice) -> dict:
    """run.json and report.html with the demo's choice in the summary the report reads:
    `demo_backend` (which backend and why), `demo_hints` (what a better one needs) and
    `demo_banner` (None, or the random-weights warning)."""
    import json

    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.driver.results import dumps, read_results
    from batch_inpaint.job.report import summary as report
    from batch_inpaint.storage.store import Storage

    summary = {
        **summary,
        "demo_backend": choice.headline(),
        "demo_hints": list(choice.hints),
        "demo_banner": choice.banner,
    }
    cfg = JobConfig.from_dict(json.loads((out / "job.json").read_text())["config"])
    storage = Storage(cfg.storage_options())
    table, _ = read_results(storage, str(out))
    if table is not None:
        report.write_report(storage, cfg, table, summary)  # with the banner and the choice
    storage.write_bytes(str(out / "run.json"), dumps(summary), root=str(out))
    return summary


def side_by_side(out: Path, choice: Choice | None = None) -> list[Path]:
    """One PNG per finished row: its input, its mask (as the job built it) and its output, under
    a caption naming the backend (and the banner, for random weights)."""
    import json

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.report.summary import row_pictures
    from batch_inpaint.storage.store import Storage
    from batch_inpaint.vocab import DONE

    cfg = JobConfig.from_dict(json.loads((out / "job.json").read_text())["config"])
    storage = Storage(cfg.storage_options())
    dest = out / "side_by_side"
    dest.mkdir(exist_ok=True)
    for old in dest.glob("*.*"):  # a rerun with another backend leaves no stale pictures
        if old.suffix in (".png", ".jpg"):
            old.unlink()
    caption = f"input | mask | output   backend {cfg.backend}"
    made = []
    for part in sorted((out / "metadata").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            if row["status"] not in DONE:
                continue
            sheet = np.concatenate(row_pictures(row, storage, cfg), axis=1)
            sheet = _captioned(sheet, caption, choice.banner if choice else None)
            path = dest / f"{Path(row['output']).stem}.png"
            Image.fromarray(sheet).save(path, optimize=False, compress_level=6)
            made.append(path)
    return made


def _captioned(sheet, text: str, banner: str | None):
    """The sheet under a strip of text; red with the banner for random weights."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    height = 36
    colour = (200, 0, 0) if banner else (40, 40, 40)
    strip = Image.new("RGB", (sheet.shape[1], height), colour)
    draw = ImageDraw.Draw(strip)
    label = f"{banner.upper()}   ({text})" if banner else text
    draw.text((10, 7), label, fill=(255, 255, 255), font=ImageFont.load_default(size=20))
    return np.concatenate([np.asarray(strip), sheet], axis=0)
