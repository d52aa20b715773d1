"""`batch-inpaint demo`: the main job on the bundled samples, on a local Ray instance, into a local
folder, then a side-by-side picture (input | mask | output) per sample. Uses the real SD2 weights
when `--model` points at them, else the tiny random checkpoint through the same diffusers code (its
"inpainting" is noise, but every stage of the product runs), or `--backend opencv` for a classical
result."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the job on the bundled samples (local Ray, no network)",
                       description=__doc__)  # fmt: skip
    p.add_argument(
        "--output", default="demo-output", help="local output folder (default: %(default)s)"
    )
    p.add_argument("--manifest", default=str(EXAMPLES / "manifest.parquet"), help="manifest to run")
    p.add_argument("--backend", default="tiny", choices=("tiny", "diffusers", "opencv"),
                   help="tiny: random checkpoint (offline); diffusers: real weights via --model")  # fmt: skip
    p.add_argument("--model", default=None, help="diffusers checkpoint (Hub id or local folder)")
    p.add_argument("--steps", type=int, default=20, help="inference steps (default: %(default)s)")
    p.add_argument("--mode", default="crop", choices=("full", "crop"))
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from batch_inpaint.cli import job_exit_status
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.ray_job import run_job

    out = Path(args.output).resolve()
    cfg = JobConfig(
        manifest=args.manifest,
        output=str(out),
        backend=args.backend,
        model=args.model,
        steps=args.steps,
        mode=args.mode,
        dilate=4,
        feather=4,
        resume=False,
        progress_interval_s=5.0,
    )
    summary = run_job(cfg)
    sheets = side_by_side(out)
    print(
        f"\ndemo: {len(sheets)} side-by-side pictures (input | mask | output) in {out / 'side_by_side'}"
    )
    print(f"demo: open {out / 'report.html'} in a browser for the report")
    if args.backend == "tiny":
        print("demo: the tiny checkpoint has random weights, so masked areas come out as noise; "
              "use --backend opencv for a classical fill, or --backend diffusers --model DIR for SD2")  # fmt: skip
    return job_exit_status(summary)


def side_by_side(out: Path) -> list[Path]:
    """One picture per finished row: its input, its mask (as the job built it) and its output."""
    import json

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.report import row_pictures
    from batch_inpaint.storage.store import Storage
    from batch_inpaint.vocab import DONE

    cfg = JobConfig.from_dict(json.loads((out / "job.json").read_text())["config"])
    storage = Storage(cfg.storage_options())
    dest = out / "side_by_side"
    dest.mkdir(exist_ok=True)
    made = []
    for part in sorted((out / "metadata").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            if row["status"] not in DONE:
                continue
            sheet = np.concatenate(row_pictures(row, storage, cfg), axis=1)
            path = dest / f"{Path(row['output']).stem}.jpg"
            Image.fromarray(sheet).save(path, quality=90)
            made.append(path)
    return made
