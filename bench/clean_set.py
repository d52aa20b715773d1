"""`python -m bench clean-set`: a synthetic cleaning set with known answers, and how well
detection and inpainting do on it.

The bundled photos (examples/images) get a semi-transparent watermark, a caption on a dark band
and a logo (PIL text and shapes at seeded places: the same bytes every run), so the ground-truth
mask of everything drawn is known exactly. The set is written to --out (images/, clean/, masks/,
manifest.parquet with a `gt` column of {kind, query, box}), then measured:

- detection, per query: recall (a drawn object counts as found when a detection with its query
  overlaps its box with IoU >= 0.5), the mean best IoU, precision, and the pixel recall of the
  ground-truth mask by the detected mask;
- inpainting, per backend (opencv, tiny, lama when it loads): the error inside the mask against
  the clean photo, with the ground-truth mask and with the detected one (`none`: the dirty image).

With --tiny every model is a random-weight one: it runs end to end offline, and the figures mean
nothing. docs/masks.md shows the run with real weights."""

from __future__ import annotations

import argparse
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import record as rec
from .sd2 import cache_root

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
QUERY_OF = {"watermark": "watermark", "caption": "text", "logo": "logo"}  # drawn kind -> query
MATCH_IOU = 0.5


# -- building the set ---------------------------------------------------------------------------
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, int(size)))  # Pillow's bundled font: same everywhere


def _layer(size: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    return im, ImageDraw.Draw(im)


def render(photo: np.ndarray, seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The photo with a watermark, a caption and a logo drawn on it, and per object its kind,
    query, box [x0, y0, x1, y1] (x1, y1 exclusive) and bool mask (every pixel it touched)."""
    h, w = photo.shape[:2]
    s = min(w, h)
    rng = np.random.default_rng(seed)
    layers = []
    # watermark: large semi-transparent text across the middle
    im, d = _layer((w, h))
    text = str(rng.choice(["© stockphoto", "SAMPLE", "© picture agency", "PREVIEW"]))
    font = _font(s / 7)
    while d.textlength(text, font=font) > 0.8 * w and font.size > 9:
        font = _font(font.size - 2)
    tw = d.textlength(text, font=font)
    x = int(rng.integers(0, max(1, int(w - tw))))
    y = int(rng.integers(int(0.3 * h), int(0.5 * h)))
    d.text((x, y), text, font=font, fill=(255, 255, 255, int(rng.integers(90, 140))))
    layers.append(("watermark", im))
    # caption: white text on a dark band along the bottom
    im, d = _layer((w, h))
    text = str(rng.choice(["Holiday 2026, photo by A. Person", "Breaking: local news at six",
                           "www.example-photos.com", "Summer collection"]))  # fmt: skip
    font = _font(s / 14)
    while d.textlength(text, font=font) > 0.9 * w and font.size > 9:
        font = _font(font.size - 1)
    band = int(font.size * 1.6)
    top = h - band - int(rng.integers(0, max(1, h // 20)))
    d.rectangle((0, top, w - 1, top + band - 1), fill=(0, 0, 0, 170))
    d.text((int(0.04 * w), top + band // 2), text, font=font, fill=(255, 255, 255, 255),
           anchor="lm")  # fmt: skip
    layers.append(("caption", im))
    # logo: a coloured disc with a letter and a bar, in a top corner
    im, d = _layer((w, h))
    r = max(6, s // 14)
    cx = int(r * 1.5) if rng.integers(0, 2) else int(w - r * 1.5)
    cy = int(r * 1.5)
    colour = tuple(int(v) for v in rng.integers(30, 220, 3)) + (230,)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    d.rectangle((cx - r, cy + r + 2, cx + r, cy + r + max(3, r // 3)), fill=colour)
    d.text((cx, cy), str(rng.choice(list("ABKMZ"))), font=_font(r * 1.2), anchor="mm",
           fill=(255, 255, 255, 255))  # fmt: skip
    layers.append(("logo", im))

    out = photo.astype(np.float32)
    objects = []
    for kind, layer in layers:
        a = np.asarray(layer, dtype=np.float32)
        alpha = a[:, :, 3:4] / 255.0
        out = out * (1.0 - alpha) + a[:, :, :3] * alpha
        mask = a[:, :, 3] > 0
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        objects.append({"kind": kind, "query": QUERY_OF[kind], "box": box, "mask": mask})
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), objects


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def build_clean_set(out: str | Path, seed: int = 0, photos: Path = EXAMPLES) -> Path:
    """Write the set under `out` and return its manifest's path (same bytes for the same seed)."""
    import pyarrow as pa

    from batch_inpaint.image.codec import load_array
    from batch_inpaint.manifest import Manifest

    out = Path(out)
    for sub in ("images", "clean", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    records = []
    for i, path in enumerate(sorted(p for p in photos.iterdir() if p.suffix in (".png", ".jpg"))):
        rid = path.stem
        clean = load_array(str(path))
        dirty, objects = render(clean, seed * 1000 + i)
        union = np.logical_or.reduce([o["mask"] for o in objects])
        (out / "clean" / f"{rid}.png").write_bytes(_png(clean))
        (out / "images" / f"{rid}.png").write_bytes(_png(dirty))
        (out / "masks" / f"{rid}.png").write_bytes(_png(union.astype(np.uint8) * 255))
        records.append({
            "id": rid, "image": f"images/{rid}.png", "mask": f"masks/{rid}.png",
            "clean": f"clean/{rid}.png", "source": path.name,
            "gt": [{"kind": o["kind"], "query": o["query"], "box": [float(v) for v in o["box"]]}
                   for o in objects],
        })  # fmt: skip
        np.savez_compressed(out / "masks" / f"{rid}.objects.npz",
                            **{o["kind"]: o["mask"] for o in objects})  # fmt: skip
    gt_type = pa.list_(pa.struct([("kind", pa.string()), ("query", pa.string()),
                                  ("box", pa.list_(pa.float64()))]))  # fmt: skip
    table = pa.table({k: pa.array([r[k] for r in records], gt_type if k == "gt" else pa.string())
                      for k in records[0]})  # fmt: skip
    path = out / "manifest.parquet"
    Manifest.from_arrow(table).write(str(path))
    return path


def load_set(folder: Path) -> list[dict[str, Any]]:
    """The set's rows with their images and masks as arrays."""
    from batch_inpaint.image.codec import load_array
    from batch_inpaint.manifest import Manifest

    rows = Manifest.read(str(folder / "manifest.parquet")).table.to_pylist()
    for r in rows:
        r["dirty"] = load_array(str(folder / r["image"]))
        r["clean_rgb"] = load_array(str(folder / r["clean"]))
        r["gt_mask"] = np.asarray(Image.open(folder / r["mask"])) > 127
    return rows


# -- measuring -----------------------------------------------------------------------------------
def detection_rows(rows: list[dict[str, Any]], provider) -> list[dict[str, Any]]:
    """Recall, best IoU and precision per query, and pixel recall of the ground-truth mask."""
    from batch_inpaint.detect.base import box_iou

    queries = sorted({o["query"] for r in rows for o in r["gt"]})
    results = provider.masks([r["dirty"] for r in rows], [queries] * len(rows))
    for r, res in zip(rows, results, strict=True):
        r["detected"] = res
    out = []
    for q in queries:
        n = found = dets = true_dets = 0
        ious = []
        for r in rows:
            mine = [d for d in r["detected"].detections if d.label == q]
            gts = [o["box"] for o in r["gt"] if o["query"] == q]
            dets += len(mine)
            true_dets += sum(any(box_iou(d.box, g) >= MATCH_IOU for g in gts) for d in mine)
            for g in gts:
                best = max((box_iou(d.box, g) for d in mine), default=0.0)
                n, found = n + 1, found + (best >= MATCH_IOU)
                ious.append(best)
        out.append({"query": q, "objects": n, "recall": found / n if n else None,
                    "mean_best_iou": float(np.mean(ious)) if ious else None,
                    "detections": dets, "precision": true_dets / dets if dets else None})  # fmt: skip
    gt = sum(int(r["gt_mask"].sum()) for r in rows)
    hit = sum(int((r["gt_mask"] & r["detected"].mask).sum()) for r in rows)
    pred = sum(int(r["detected"].mask.sum()) for r in rows)
    out.append({"query": "(mask pixels)", "objects": len(rows), "recall": hit / gt if gt else None,
                "precision": hit / pred if pred else None})  # fmt: skip
    return out


def _errors(clean: np.ndarray, out: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    diff = clean[mask].astype(np.float64) - out[mask].astype(np.float64)
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    psnr = 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")
    return float(np.mean(np.abs(diff))) if diff.size else 0.0, psnr


TINY_MAX_SIDE = 128  # the tiny checkpoint's output is noise: no need to pay for 1024 px of it


def inpainting_rows(rows, backends, steps: int, device: str, lama_model: str | None, notes,
                    mode: str = "full", max_side: int = 1024):  # fmt: skip
    """Error inside the ground-truth mask against the clean photo, per backend and mask."""
    from batch_inpaint import inpaint_array, load_inpainter
    from batch_inpaint.errors import InpaintError
    from batch_inpaint.params import GenerationParams, GeometryOptions, InpaintOptions

    generation = GenerationParams(num_inference_steps=steps, seed=0)
    out = []
    base = [_errors(r["clean_rgb"], r["dirty"], r["gt_mask"]) for r in rows]
    out.append({"backend": "none (dirty)", "mask": "-", "images": len(rows),
                "mae_in_mask": float(np.mean([b[0] for b in base])),
                "psnr_in_mask": float(np.mean([b[1] for b in base]))})  # fmt: skip
    for backend in backends:
        try:
            model = lama_model if backend == "lama" else None
            inp = load_inpainter(backend, model, device=device)
            side = min(max_side, TINY_MAX_SIDE) if backend == "tiny" else max_side
            options = InpaintOptions(generation=generation,
                                     geometry=GeometryOptions(mode=mode, max_side=side))  # fmt: skip
        except (InpaintError, ImportError) as exc:
            notes.append(f"backend {backend} skipped: {exc}")
            continue
        for kind in ("gt", "detected"):
            errs = []
            for r in rows:
                mask = r["gt_mask"] if kind == "gt" else r["detected"].mask
                if not mask.any():
                    continue
                res = inpaint_array(r["dirty"], mask, inp, options)
                errs.append(_errors(r["clean_rgb"], res.image, r["gt_mask"]))
            if errs:
                out.append({"backend": backend, "mask": kind, "images": len(errs),
                            "mae_in_mask": float(np.mean([e[0] for e in errs])),
                            "psnr_in_mask": float(np.mean([e[1] for e in errs]))})  # fmt: skip
    return out


# -- the command ---------------------------------------------------------------------------------
def tiny_models(cache_dir: str | None) -> dict[str, str]:
    """The random-weight detection checkpoints (make-tiny-model kinds), built once in the cache."""
    from batch_inpaint.detect.tiny import make_tiny

    root = cache_root(cache_dir) / "detect-tiny-v1"
    return {k: str(make_tiny(k, root / k)) for k in ("detector", "text-detector", "segmenter")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench clean-set", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    a = p.add_argument
    a("--text", action="store_true", help="the text-line set with the shipped text detector "
      "instead (bench/clean_text.py; `clean-set --text -h`)")  # fmt: skip
    a("--out", help="where the set is written (default: a temporary folder)")
    a("--seed", type=int, default=0, help="placement seed (default 0)")
    a("--build-only", action="store_true", help="write the set and stop")
    a("--tiny", action="store_true", help="random-weight detection models: offline, figures "
      "meaningless")  # fmt: skip
    a("--detector", help="Grounding DINO: Hub id, folder or s3:// (default: the Hub default)")
    a("--text-detector", help="PP-OCR det checkpoint, or 'none' (default: the Hub default)")
    a("--segmenter", help="SAM checkpoint to refine boxes ('tiny' with --tiny; default: none)")
    a("--threshold", type=float, help="detector threshold (default: the detector's)")
    a("--text-threshold", type=float, help="text detector threshold (default: its own)")
    a("--max-detections", type=int, default=20, help="per image and detector (20)")
    a("--backends", default="opencv,tiny,lama", help="inpainting backends (opencv,tiny,lama)")
    a("--lama-model", help="LaMa weights for the lama backend (skipped without)")
    a("--steps", type=int, default=4, help="denoising steps of the diffusion backends (4)")
    a("--mode", default="full", choices=["full", "crop"], help="inpainting geometry (full)")
    a(
        "--max-side",
        type=int,
        default=1024,
        help=f"full mode: longest working side (1024; tiny: at most {TINY_MAX_SIDE})",
    )
    a("--device", default="cpu", help="cpu | cuda (default cpu)")
    a("--cache-dir", help="where random checkpoints are kept")
    a("--results-dir", help="where the record goes (default bench/results/)")
    a("--no-write", action="store_true", help="print only")
    return p


def main(argv: list[str]) -> int:
    import shlex
    import time

    from batch_inpaint.detect.provider import MaskProvider

    if "--text" in argv:
        from .clean_text import main as clean_text

        return clean_text(argv)
    args = parser().parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="clean-set-"))
    manifest = build_clean_set(out, args.seed)
    print(f"clean set: {manifest}")
    if args.build_only:
        return 0
    models = tiny_models(args.cache_dir) if args.tiny else {}
    provider = MaskProvider.load(
        detector=args.detector or models.get("detector"),
        text_detector=args.text_detector or models.get("text-detector"),
        segmenter=models["segmenter"] if args.tiny and args.segmenter == "tiny" else args.segmenter,
        text_threshold=args.text_threshold, threshold=args.threshold,
        max_detections=args.max_detections, device=args.device,
    )  # fmt: skip
    rows = load_set(out)
    r = rec.Record("clean-set", "synthetic cleaning set: detection recall/IoU per query, "
                   "inpainting error inside the mask per backend", rec.device_name(args.device),
                   {"set": str(out), "seed": args.seed, "images": len(rows),
                    "providers": provider.describe(), "steps": args.steps,
                    "backends": args.backends, "mode": args.mode, "max_side": args.max_side,
                    "tiny": args.tiny})  # fmt: skip
    r.rows = [{"part": "detection", **x} for x in detection_rows(rows, provider)]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    r.rows += [
        {"part": "inpainting", **x}
        for x in inpainting_rows(
            rows,
            backends,
            args.steps,
            args.device,
            args.lama_model,
            r.notes,
            args.mode,
            args.max_side,
        )
    ]
    if args.tiny:
        r.notes.append("random-weight detection models (--tiny): the figures are meaningless; "
                       "this run proves the set and the harness work end to end")  # fmt: skip
    r.seconds = round(time.perf_counter() - t0, 2)
    r.command = "python -m bench clean-set " + shlex.join(argv)
    r.smoke = bool(args.tiny)
    print(f"\n== clean-set: {r.title}\n   {r.device}, {r.seconds:.1f} s")
    for part in ("detection", "inpainting"):
        print(rec.table([{k: v for k, v in x.items() if k != "part"} for x in r.rows
                         if x["part"] == part]))  # fmt: skip
    for n in r.notes:
        print(f"note: {n}")
    if not args.no_write:
        print(f"record: {r.write(args.results_dir)}")
    print(json.dumps({"set": str(out)}))
    return 0
