"""`python -m bench clean-set --text`: overlaid text with known line boxes, and how well the shipped
text detector (detect/shipped.py, real weights, offline) finds it and how often text is found
again after an opencv fill.

Each row is a photo (the bundled ones without text of their own, and photos generated from the
seed: sky, ground, blobs, noise) with 1-3 lines of text drawn with Pillow's bundled font: sizes
12-72 px, a colour from a palette (an outline in a contrasting one now and then), opacity
40-100 %, rotation up to ±15°. About half the rows also get a distractor that holds no text:
stripes or a fine texture. Same seed, same bytes.

Measured, per setting (box threshold × --text-min-confidence): recall and precision per text
line at IoU >= 0.5, detections on distractors, rows with any false box; recall per font size,
opacity and angle (threshold 0.5); then, at the box threshold, without and with the recogniser,
each row filled with opencv inside the detected mask (as is, and grown by 4 px) and detected
again as `--verify` does (the highest score of a box over the mask at threshold 0): the share of
rows where text is found again (score >= the box threshold)."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from . import record as rec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
HAS_TEXT = {"page.png", "text.png", "motorcycle.png"}  # their own text would count as false
WORDS = ("SAMPLE", "© stockphoto", "PREVIEW", "Holiday 2026", "photo by A. Person", "www.example.com",
         "Breaking news", "Summer sale -40%", "Do not copy", "Draft", "14:32 12/05/2026", "Episode 3",
         "Press", "Lorem ipsum dolor", "CONFIDENTIAL", "@user_name", "Made in Italy", "#42")  # fmt: skip
COLOURS = ((255, 255, 255), (0, 0, 0), (255, 220, 0), (230, 30, 30), (30, 90, 230),
           (40, 200, 80), (128, 128, 128))  # fmt: skip
SIZES = ((640, 480), (1024, 768), (1280, 720), (1920, 1080), (512, 512))
MATCH_IOU = 0.5
THRESHOLDS = (0.5, 0.6, 0.7)
MIN_CONFIDENCES = (None, 0.5, 0.7, 0.8)


def synth_photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A photo-like picture: a sky gradient, a ground, soft blobs, grain."""
    top, bottom = rng.integers(60, 255, 3), rng.integers(0, 200, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    img = (top * (1 - t) + bottom * t) * np.ones((1, w, 1))
    horizon = int(h * rng.uniform(0.4, 0.8))
    img[horizon:] = rng.integers(20, 180, 3) * (0.7 + 0.3 * rng.random((h - horizon, 1, 1)))
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(3, 9))):
        x, y, r = (
            int(rng.integers(0, w)),
            int(rng.integers(0, h)),
            int(rng.integers(h // 20, h // 4)),
        )
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    pic = pic.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(2, 8))))
    grain = rng.normal(0, rng.uniform(2, 8), (h, w, 1))
    return np.clip(np.asarray(pic, np.float32) + grain, 0, 255).astype(np.uint8)


def distractor(rng: np.random.Generator, img: np.ndarray) -> list[float]:
    """Stripes or a fine texture in a patch of `img` (in place); its box."""
    h, w = img.shape[:2]
    pw, ph = int(w * rng.uniform(0.15, 0.35)), int(h * rng.uniform(0.1, 0.3))
    x, y = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
    yy, xx = np.mgrid[0:ph, 0:pw]
    if rng.random() < 0.5:  # stripes at an angle, period 4-16 px
        a, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        pat = (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) > 0).astype(
            np.float32
        )
    else:  # fine texture: noise in 1-3 px cells
        cell = int(rng.integers(1, 4))
        pat = rng.random((ph // cell + 1, pw // cell + 1)).repeat(cell, 0).repeat(cell, 1)[:ph, :pw]
    c0, c1 = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
    img[y : y + ph, x : x + pw] = (c0 * (1 - pat[..., None]) + c1 * pat[..., None]).astype(np.uint8)
    return [float(x), float(y), float(x + pw), float(y + ph)]


def _line_layer(rng: np.random.Generator, text: str, size: int, angle: float):
    """(alpha uint8, colour layer RGB) of one line, rotated, cropped to its pixels."""
    font = ImageFont.load_default(size=size)
    outline = rng.random() < 0.3
    stroke = max(1, size // 15) if outline else 0
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font,
                                                          stroke_width=stroke)  # fmt: skip
    pad = stroke + 2
    tw, th = box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad
    fill = COLOURS[int(rng.integers(0, len(COLOURS)))]
    edge = (0, 0, 0) if sum(fill) > 380 else (255, 255, 255)
    rgb, alpha = Image.new("RGB", (tw, th), edge), Image.new("L", (tw, th), 0)
    origin = (pad - box[0], pad - box[1])
    ImageDraw.Draw(alpha).text(origin, text, font=font, fill=255, stroke_width=stroke)
    ImageDraw.Draw(rgb).text(origin, text, font=font, fill=fill, stroke_width=stroke,
                             stroke_fill=edge)  # fmt: skip
    alpha = alpha.rotate(angle, resample=Image.BICUBIC, expand=True)
    rgb = rgb.rotate(angle, resample=Image.BICUBIC, expand=True)
    a = np.asarray(alpha)
    ys, xs = np.nonzero(a)
    crop = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return a[crop[1] : crop[3], crop[0] : crop[2]], np.asarray(rgb)[
        crop[1] : crop[3], crop[0] : crop[2]
    ]


def render(photo: np.ndarray, seed: int) -> tuple[np.ndarray, list[dict], list[list[float]]]:
    """The photo with 1-3 text lines (and maybe a distractor) drawn on it; the lines (box, size,
    opacity, angle, text) and the distractors' boxes."""
    rng = np.random.default_rng(seed)
    img = photo.copy()
    h, w = img.shape[:2]
    taken: list[list[float]] = []
    distractors = [distractor(rng, img) for _ in range(int(rng.random() < 0.5))]
    taken += distractors
    lines: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(40):
            size = int(round(np.exp(rng.uniform(np.log(12), np.log(min(72, h / 4))))))
            text = str(rng.choice(WORDS))
            angle = float(rng.uniform(-15, 15))
            alpha, colour = _line_layer(rng, text, size, angle)
            lh, lw = alpha.shape
            if lw > 0.95 * w or lh > 0.6 * h:
                continue
            x, y = int(rng.integers(0, w - lw)), int(rng.integers(0, h - lh))
            box = [float(x), float(y), float(x + lw), float(y + lh)]
            gap = size * 0.6
            if any(box[0] - gap < t[2] and t[0] < box[2] + gap and box[1] - gap < t[3]
                   and t[1] < box[3] + gap for t in taken):  # fmt: skip
                continue
            opacity = float(rng.uniform(0.4, 1.0))
            a = alpha[..., None].astype(np.float32) / 255.0 * opacity
            part = img[y : y + lh, x : x + lw].astype(np.float32)
            img[y : y + lh, x : x + lw] = np.rint(part * (1 - a) + colour * a).astype(np.uint8)
            taken.append(box)
            lines.append({"box": box, "size": size, "opacity": opacity, "angle": angle,
                          "text": text})  # fmt: skip
            break
    return img, lines, distractors


def build(seed: int, synthetic: int, variants: int) -> list[dict[str, Any]]:
    """The rows: `variants` renderings of each bundled photo without text, `synthetic` generated
    photos of the SIZES in turn."""
    from batch_inpaint.image.codec import load_array

    rows = []
    photos = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    for k, path in enumerate(p for p in photos if p.name not in HAS_TEXT):
        for v in range(variants):
            rows.append({"id": f"{path.stem}-{v}", "photo": load_array(str(path)),
                         "seed": seed * 100003 + k * 101 + v})  # fmt: skip
    for i in range(synthetic):
        rng = np.random.default_rng(seed * 7919 + i)
        w, h = SIZES[i % len(SIZES)]
        rows.append({"id": f"synthetic-{i}", "photo": synth_photo(rng, w, h),
                     "seed": seed * 100003 + 50000 + i})  # fmt: skip
    for r in rows:
        r["dirty"], r["lines"], r["distractors"] = render(r["photo"], r["seed"])
    return rows


# -- measuring -----------------------------------------------------------------------------------
def _match(boxes: list, lines: list[dict]) -> tuple[int, int]:
    """(lines found, boxes that match a line) at IoU >= MATCH_IOU."""
    from batch_inpaint.detect.base import box_iou

    found = sum(any(box_iou(b, ln["box"]) >= MATCH_IOU for b in boxes) for ln in lines)
    true = sum(any(box_iou(b, ln["box"]) >= MATCH_IOU for ln in lines) for b in boxes)
    return found, true


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def detect_rows(rows: list[dict], det) -> float:
    """Each row's candidate lines (box, score, recogniser confidence) at the lowest threshold;
    the mean detection seconds per row (map and boxes, no recogniser)."""
    from batch_inpaint.detect.shipped import TextReader

    reader, seconds = TextReader(), 0.0
    for r in rows:
        t0 = time.perf_counter()
        h, w = r["dirty"].shape[:2]
        prob = det._maps(det._tensor(r["dirty"])[None])[0]
        found = det.regions(prob, (w, h), min(THRESHOLDS))
        seconds += time.perf_counter() - t0
        conf = reader.confidences(r["dirty"], [q for _, _, q in found])
        r["candidates"] = [(b, s, c) for (b, s, _), c in zip(found, conf, strict=True)]
    return seconds / max(1, len(rows))


def _kept(r: dict, t: float, mc: float | None) -> list:
    return [b for b, s, c in r["candidates"] if s >= t and (mc is None or c >= mc)]


def setting_rows(rows: list[dict]) -> list[dict]:
    out = []
    n_lines = sum(len(r["lines"]) for r in rows)
    with_d = [r for r in rows if r["distractors"]]
    for t in THRESHOLDS:
        for mc in MIN_CONFIDENCES:
            found = true = dets = on_d = rows_fp = 0
            for r in rows:
                boxes = _kept(r, t, mc)
                f, tr = _match(boxes, r["lines"])
                found, true, dets = found + f, true + tr, dets + len(boxes)
                rows_fp += tr < len(boxes)
                on_d += sum(_overlaps(b, d) for b in boxes for d in r["distractors"]
                            if not any(_overlaps(b, ln["box"]) for ln in r["lines"]))  # fmt: skip
            out.append({"threshold": t, "min_confidence": mc, "lines": n_lines,
                        "recall": found / n_lines, "detections": dets,
                        "precision": true / dets if dets else None,
                        "rows_with_false_box": rows_fp, "boxes_on_distractors": on_d,
                        "rows_with_distractor": len(with_d)})  # fmt: skip
    return out


BUCKETS = {"size": ((12, 20), (20, 36), (36, 73)), "opacity": ((0.4, 0.6), (0.6, 0.8), (0.8, 1.01)),
           "abs_angle": ((0, 5), (5, 10), (10, 15.01))}  # fmt: skip


def bucket_rows(rows: list[dict], t: float, mc: float | None) -> list[dict]:
    from batch_inpaint.detect.base import box_iou

    out = []
    for key, spans in BUCKETS.items():
        for lo, hi in spans:
            n = hit = 0
            for r in rows:
                boxes = _kept(r, t, mc)
                for ln in r["lines"]:
                    v = abs(ln["angle"]) if key == "abs_angle" else ln[key]
                    if lo <= v < hi:
                        n += 1
                        hit += any(box_iou(b, ln["box"]) >= MATCH_IOU for b in boxes)
            out.append({"by": key, "range": f"{lo}-{min(hi, 72 if key == 'size' else hi):g}",
                        "lines": n, "recall": hit / n if n else None})  # fmt: skip
    return out


def fill_rows(rows: list[dict], provider, t: float, mc: float | None, dilates=(0, 4)) -> list:
    """Per dilation: opencv fills the detected mask, the detector runs again as --verify does."""
    from batch_inpaint import inpaint_array, load_inpainter
    from batch_inpaint.detect.base import Detection
    from batch_inpaint.detect.masks import mask_from_detections
    from batch_inpaint.detect.provider import MaskProvider
    from batch_inpaint.job.stages.verify import residual
    from batch_inpaint.params import InpaintOptions

    if mc is not None:  # verify asks the provider the run loaded: with the recogniser
        provider = MaskProvider.load(queries=["text"], text_min_confidence=mc)
    inp, out = load_inpainter("opencv", None, device="cpu"), []
    for dil in dilates:
        again = filled = 0
        scores = []
        for r in rows:
            dets = [Detection("text", 1.0, tuple(b)) for b in _kept(r, t, mc)]
            h, w = r["dirty"].shape[:2]
            mask = mask_from_detections(dets, (w, h), dilate_px=dil)
            if not mask.any():
                continue
            res = inpaint_array(r["dirty"], mask, inp, InpaintOptions())
            found = provider.detector.detect([res.image], [["text"]], 0.0, max_detections=100)[0]
            score = residual(found, mask).score
            filled, again, scores = filled + 1, again + (score >= t), scores + [score]
        out.append({"backend": "opencv", "min_confidence": mc, "dilate": dil,
                    "rows_filled": filled,
                    "text_found_again": again, "share": again / filled if filled else None,
                    "mean_residual": float(np.mean(scores)) if scores else None})  # fmt: skip
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench clean-set --text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    a = p.add_argument
    a("--text", action="store_true", help="this set (how clean-set gets here)")
    a("--seed", type=int, default=0, help="seed of the photos and the text (0)")
    a("--variants", type=int, default=4, help="renderings of each bundled photo (4)")
    a("--synthetic", type=int, default=30, help="generated photos (30)")
    a("--threshold", type=float, default=0.5, help="the box threshold of the fill part (0.5)")
    a("--min-confidence", type=float, default=0.5,
      help="the fill part runs without and with this --text-min-confidence (0.5)")  # fmt: skip
    a("--out", help="also write the rows' images (dirty PNGs) here")
    a("--results-dir", help="where the record goes (default bench/results/)")
    a("--no-write", action="store_true", help="print only")
    return p


def main(argv: list[str]) -> int:
    from batch_inpaint.detect.provider import MaskProvider

    args = parser().parse_args(argv)
    t0 = time.perf_counter()
    rows = build(args.seed, args.synthetic, args.variants)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for r in rows:
            Image.fromarray(r["dirty"]).save(Path(args.out) / f"{r['id']}.png")
    provider = MaskProvider.load(queries=["text"])
    det = provider.detector.text
    r = rec.Record("clean-set-text", "overlaid text lines: the shipped text detector's recall and "
                   "precision per line (IoU >= 0.5), text found again after an opencv fill",
                   rec.device_name("cpu"), {"seed": args.seed, "rows": len(rows),
                   "lines": sum(len(x["lines"]) for x in rows),
                   "rows_with_distractor": sum(bool(x["distractors"]) for x in rows),
                   "bundled_rows": sum(not x["id"].startswith("synthetic") for x in rows),
                   "synthetic_rows": args.synthetic, "detector": det.describe(),
                   "fill_threshold": args.threshold,
                   "fill_min_confidence": args.min_confidence})  # fmt: skip
    sec = detect_rows(rows, det)
    r.rows = [{"part": "detection", **x} for x in setting_rows(rows)]
    r.rows += [{"part": "recall by", **x} for x in bucket_rows(rows, args.threshold, None)]
    for mc in (None, args.min_confidence):
        r.rows += [{"part": "fill", **x} for x in fill_rows(rows, provider, args.threshold, mc)]
    r.notes.append(f"detection alone: {sec:.3f} s per row on average (mixed sizes, "
                   f"{rec.cores()} cores, other work running)")  # fmt: skip
    r.seconds = round(time.perf_counter() - t0, 2)
    r.command = "python -m bench clean-set " + shlex.join(argv)
    print(f"\n== clean-set --text: {r.title}\n   {r.device}, {r.seconds:.1f} s, "
          f"{len(rows)} rows")  # fmt: skip
    for part in ("detection", "recall by", "fill"):
        print(rec.table([{k: v for k, v in x.items() if k != "part"} for x in r.rows
                         if x["part"] == part]))  # fmt: skip
    for n in r.notes:
        print(f"note: {n}")
    if not args.no_write:
        print(f"record: {r.write(args.results_dir)}")
    print(json.dumps({"rows": len(rows)}))
    return 0
