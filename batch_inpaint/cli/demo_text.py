"""The demo's hands-free text pass: bundled photos get a generated caption and a watermark word,
and a job with `--detect text --verify` and no masks finds the text with the shipped detector
(PP-OCRv6 small det from the rapidocr wheel, offline), fills it with the demo's backend and
checks each fill. Its folder lies beside the main demo's: OUTPUT-text/ holds inputs/ (the
pictures and their manifest, which this pass writes) and output/ (the job's, with report.html
and side_by_side/: input with the boxes found | mask | output, and the residual score)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PHOTOS = (("coffee.png", "Espresso bar, Via Roma 12", "SAMPLE"),
          ("astronaut.png", "Mission day 4: all systems go", "PREVIEW"),
          ("rocket.jpg", "Launch window opens at 06:30", "stockphoto"))  # fmt: skip
# Verify counts only lines the recogniser reads: an opencv fill's streaks can look like strokes
# to the detector alone (docs/masks.md, "The shipped text detector")
MIN_CONFIDENCE = 0.5


def detector_line() -> str:
    """Which text detector the pass runs, for the terminal."""
    from batch_inpaint.detect.shipped import DET_FILE, SHIPPED, install_problem, model_file

    problem = install_problem()
    if problem:
        return f"the shipped text detector can't load: {problem}"
    from importlib.metadata import version

    return (f"text detector {SHIPPED} (PP-OCRv6 small det, {model_file(DET_FILE).name} from the "
            f"rapidocr {version('rapidocr')} wheel, onnxruntime on the CPU, no download)")  # fmt: skip


def write_inputs(folder: Path) -> Path:
    """The photos with their caption (bottom, white with a dark outline) and watermark (large,
    half transparent, across the middle), and a manifest with no mask, only what to find (a
    `detect` column); its path."""
    import pyarrow as pa
    from PIL import Image, ImageDraw, ImageFont

    from batch_inpaint.manifest import Manifest

    ours = {f"{Path(n).stem}.png" for n, _, _ in PHOTOS} | {"manifest.parquet"}
    if folder.is_dir() and any(p.name not in ours for p in folder.iterdir()):
        from batch_inpaint.errors import ConfigError

        raise ConfigError(f"{folder} holds files the demo did not write; the text pass writes "
                          "its pictures there: move them, or give another --output")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for name, caption, mark in PHOTOS:
        im = Image.open(EXAMPLES / "images" / name).convert("RGB")
        w, h = im.size
        layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        big = ImageFont.load_default(size=max(16, min(w, h) // 7))
        d.text((w // 2, h // 2), mark, font=big, anchor="mm", fill=(255, 255, 255, 140))
        small = ImageFont.load_default(size=max(12, h // 18))
        d.text((w // 25, h - h // 12), caption, font=small, anchor="ls", fill=(255, 255, 255, 255),
               stroke_width=2, stroke_fill=(0, 0, 0, 255))  # fmt: skip
        out = Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")
        rid = Path(name).stem
        out.save(folder / f"{rid}.png")
        ids.append(rid)
    table = pa.table({"id": ids, "image": [f"{i}.png" for i in ids],
                      "detect": ["text"] * len(ids)})  # fmt: skip
    Manifest.from_arrow(table).write(str(folder / "manifest.parquet"))
    return folder / "manifest.parquet"


def say(line: str) -> None:
    print(f"demo: {line}", flush=True)


def text_pass(out: Path, choice: Any, steps: int, mode: str, mark: Any, captioned: Any) -> dict:
    """Run the pass beside `out` (the main demo's folder) and say what it found and left.
    `choice`: the demo's backend Choice; `mark(out, summary, choice)` and `captioned(sheet, text,
    banner)`: the demo's report marking and picture caption (cli/demo.py passes them)."""
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.run import run_job

    folder = out.with_name(out.name + "-text")
    manifest = write_inputs(folder / "inputs")
    print()
    say(f"text pass: {len(PHOTOS)} photos with a caption and a watermark, no masks given")
    say(f"{detector_line()}; lines kept when its recogniser reads them at >= {MIN_CONFIDENCE}")
    cfg = JobConfig(manifest=str(manifest), output=str(folder / "output"), backend=choice.backend,
                    model=choice.model, steps=steps, mode=mode, detect=["text"], verify=True,
                    text_min_confidence=MIN_CONFIDENCE, detect_dilate=4, feather=2, resume=False, prune=True,
                    progress_interval_s=5.0)  # fmt: skip
    summary = mark(folder / "output", run_job(cfg), choice)
    for line in sheets(folder / "output", choice, captioned):
        say(f"  {line}")
    say(
        f"text pass pictures (input with the boxes found | mask | output) in "
        f"{folder / 'output' / 'side_by_side'}; report {folder / 'output' / 'report.html'}"
    )
    return summary


def sheets(out: Path, choice: Any, captioned: Any) -> list[str]:
    """One picture per finished row: its input with the detected boxes drawn, the mask and the
    output, captioned with the residual score; a line per row for the terminal."""
    import json

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.report.summary import row_pictures
    from batch_inpaint.storage.store import Storage

    cfg = JobConfig.from_dict(json.loads((out / "job.json").read_text())["config"])
    storage = Storage(cfg.storage_options())
    dest = out / "side_by_side"
    dest.mkdir(exist_ok=True)
    lines = []
    for part in sorted((out / "metadata").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            found = row.get("detections") or []
            score = row.get("residual_score")
            after = "not verified" if score is None else f"residual score {score:.2f}"
            lines.append(f"{row['id']}: {row['status']}, {len(found)} text boxes, {after}")
            if not row.get("output") or not row.get("mask_used"):
                continue
            rgb, mask, filled = row_pictures(row, storage, cfg)
            boxed = Image.fromarray(rgb)
            draw = ImageDraw.Draw(boxed)
            for d in found:
                draw.rectangle([float(v) for v in d["box"]], outline=(255, 0, 0), width=2)
            sheet = np.concatenate([np.asarray(boxed), mask, filled], axis=1)
            text = f"input + text found | mask | output   backend {cfg.backend}, {after}"
            Image.fromarray(captioned(sheet, text, choice.banner)).save(dest / f"{row['id']}.png")
    return lines
