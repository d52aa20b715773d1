"""crop: crop mode's CPU cost per row outside the model, on large photos with small masks.

Per row, on one core (one thread): decode (a JPEG q92 photo), mask build (boxes, as a manifest's
`mask_boxes`), prepare (finish the mask, plan the regions, cut them: image/inpaint.prepare and
image/geometry), paste (geometry.paste through inpaint.compose, with a stand-in model output of
each region's work size: no model time) and encode (codec.encode_image, PNG level 1 and JPEG q95).
prepare and paste also run as they were before this workload's cuts (bench/crop_before.py), on
the same inputs, side by side; both must give the same pixels. From the CPU seconds per row:
the cores one GPU needs to keep up at W1's goal (see ASSUMPTION).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time

import numpy as np

from batch_inpaint.image import codec, geometry, masks
from batch_inpaint.image.inpaint import compose, prepare
from batch_inpaint.params import GeometryOptions, InpaintOptions, MaskOptions

from . import crop_before as before
from . import record as rec

SIZES = [(1920, 1080), (3840, 2160)]
QUICK_SIZES = [(960, 540)]
NATIVE, MULTIPLE = 512, 8  # SD2-inpainting's spec: each region is one 512x512 inpaint
FEATHERS = {"hard": MaskOptions(), "feathered": MaskOptions(dilate=4, feather=4)}
ASSUMPTION = (
    "One GPU runs W1's goal of 4 inpaints/s of 512x512 (50 steps); crop mode sends one 512x512 "
    "inpaint per region, so it finishes 4 / regions rows/s, and cores = CPU s per row x "
    "4 / regions. The model stage's own CPU work (bytes to tensors and back) is not counted."
)


def mask_boxes(kind: str, w: int, h: int) -> list[list[int]]:
    """'watermark': one box of ~5% of the frame at the bottom right; 'scattered': four boxes of
    ~0.4% each, far apart (a logo, a caption, two stamps)."""
    if kind == "watermark":
        bw, bh = round(w * 0.30), round(h * 0.167)
        return [[w - bw - w // 50, h - bh - h // 30, w - w // 50, h - h // 30]]
    bw, bh = round(w * 0.063), round(h * 0.063)
    spots = [(0.05, 0.06), (0.47, 0.42), (0.90, 0.08), (0.16, 0.88)]
    return [[round(x * w), round(y * h), round(x * w) + bw, round(y * h) + bh] for x, y in spots]


def best_cpu(fn, repeats: int):
    """The fastest CPU seconds (this process) of `repeats` calls, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        c0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - c0)
    return best, out


def measure(w: int, h: int, kind: str, feather: str, repeats: int) -> dict:
    image = rec.sample_image(h, w, seed=w + h)
    data = codec.encode_image(image, "jpeg", quality=92)
    boxes = mask_boxes(kind, w, h)
    options = InpaintOptions(mask=FEATHERS[feather], geometry=GeometryOptions(mode="crop"))

    decode, rgb = best_cpu(lambda: codec.decode_image(data), repeats)
    build, mask = best_cpu(lambda: masks.mask_from_boxes(boxes, (w, h)), repeats)
    prep_s, prep = best_cpu(lambda: prepare(rgb, mask, options, NATIVE, MULTIPLE), repeats)
    old_s, old = best_cpu(lambda: before.prepare(rgb, mask, options, NATIVE, MULTIPLE), repeats)
    results = [[np.ascontiguousarray(255 - c)] for c in prep.crops]  # the stand-in model
    paste_s, out = best_cpu(lambda: compose(rgb, prep.soft, prep.regions, results)[0], repeats)
    pieces = [(r, res[0]) for r, res in zip(prep.regions, results, strict=True)]
    old_paste_s, old_out = best_cpu(lambda: before.paste(rgb, old.soft, pieces), repeats)
    # The job carries the soft mask as bytes (0..255) between stages: paste takes them as they are.
    soft8 = np.round(prep.soft * 255).astype(np.uint8)
    bytes_s, out8 = best_cpu(lambda: geometry.paste(rgb, soft8, pieces), repeats)
    old_bytes_s, _ = best_cpu(
        lambda: before.paste(rgb, soft8.astype(np.float32) / 255.0, pieces), repeats
    )
    same = (
        prep.regions == old.regions
        and np.array_equal(prep.soft, old.soft)
        and np.array_equal(out, old_out)
        and np.array_equal(out, out8)
        and all(np.array_equal(a, b) for a, b in zip(prep.crops, old.crops, strict=True))
    )
    assert same, f"{w}x{h} {kind} {feather}: the cut path changed pixels"
    png_s, png = best_cpu(lambda: codec.encode_image(out, "png", png_compress_level=1), repeats)
    jpeg_s, jpeg = best_cpu(lambda: codec.encode_image(out, "jpeg", quality=95), repeats)
    rle_s, rle = best_cpu(lambda: _png_rle(out), repeats)
    plain_s, plain = best_cpu(lambda: _jpeg_unoptimized(out), repeats)

    regions = len(prep.regions)
    common = decode + build + prep_s + paste_s
    row = {
        "size": f"{w}x{h}",
        "mask": kind,
        "edge": feather,
        "mask_pct": round(100.0 * float(mask.mean()), 2),
        "regions": regions,
        "decode_cpu_s": decode,
        "mask_cpu_s": build,
        "prepare_cpu_s": prep_s,
        "prepare_before_cpu_s": old_s,
        "paste_cpu_s": paste_s,
        "paste_before_cpu_s": old_paste_s,
        "paste_bytes_cpu_s": bytes_s,
        "paste_bytes_before_cpu_s": old_bytes_s,
        "encode_png1_cpu_s": png_s,
        "encode_jpeg95_cpu_s": jpeg_s,
        "row_png1_cpu_s": common + png_s,
        "row_jpeg95_cpu_s": common + jpeg_s,
        "row_png1_before_cpu_s": decode + build + old_s + old_paste_s + png_s,
        "png1_kib": round(len(png) / 1024, 1),
        "jpeg95_kib": round(len(jpeg) / 1024, 1),
        "whatif_png1_rle_cpu_s": rle_s,
        "whatif_png1_rle_kib": round(len(rle) / 1024, 1),
        "whatif_jpeg95_unoptimized_cpu_s": plain_s,
        "whatif_jpeg95_unoptimized_kib": round(len(plain) / 1024, 1),
        "same_pixels": same,
    }
    rate = rec.GOAL_W1_IMAGES_PER_S / max(1, regions)  # rows/s one GPU finishes
    row["cores_w1_png1"] = round(rate * row["row_png1_cpu_s"], 2)
    row["cores_w1_jpeg95"] = round(rate * row["row_jpeg95_cpu_s"], 2)
    print(rec.table([row]).splitlines()[-1], flush=True)
    return row


def _png_rle(rgb: np.ndarray) -> bytes:
    """What-if, not what the job writes: OpenCV's PNG at level 1 with zlib's RLE strategy (same
    pixels, other bytes), to size what another PNG encoder would save."""
    import cv2

    flag = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), flag)
    assert ok
    return buf.tobytes()


def _jpeg_unoptimized(rgb: np.ndarray) -> bytes:
    """What-if: codec's JPEG q95 (4:4:4) without the second pass that optimizes the Huffman
    tables (same pixels, larger file)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, subsampling=0, optimize=False)
    return buf.getvalue()


def profile_row(w: int, h: int, kind: str, top: int = 12) -> list[dict]:
    """cProfile of one feathered row (decode to PNG level 1): the functions with the most own
    time, as shares of the row."""
    image = rec.sample_image(h, w, seed=1)
    data = codec.encode_image(image, "jpeg", quality=92)
    options = InpaintOptions(mask=FEATHERS["feathered"], geometry=GeometryOptions(mode="crop"))

    def one() -> None:
        rgb = codec.decode_image(data)
        prep = prepare(rgb, masks.mask_from_boxes(mask_boxes(kind, w, h), (w, h)), options,
                       NATIVE, MULTIPLE)  # fmt: skip
        out = compose(rgb, prep.soft, prep.regions, [[255 - c] for c in prep.crops])[0]
        codec.encode_image(out, "png", png_compress_level=1)

    one()
    prof = cProfile.Profile()
    prof.runcall(one)
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]  # type: ignore[attr-defined]
    return [{"function": f"{fn.split('/')[-1]}:{line}({name})", "own_share": round(v[2] / total, 3)}
            for (fn, line, name), v in rows]  # fmt: skip


def crop(args) -> rec.Record:
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # per core, as a Ray task with num_cpus=1 should run
    try:
        return _crop(args)
    finally:
        cv2.setNumThreads(threads)


def _crop(args) -> rec.Record:
    sizes = QUICK_SIZES if args.quick else SIZES
    repeats = 1 if args.quick else max(args.repeats, 3)
    r = rec.Record(
        "crop",
        "crop mode's CPU per row outside the model: decode, mask, prepare, paste, encode",
        rec.device_name("cpu"),
        {"sizes": [f"{w}x{h}" for w, h in sizes], "masks": ["watermark", "scattered"],
         "edges": {k: [v.dilate, v.feather] for k, v in FEATHERS.items()},
         "spec": {"native_size": NATIVE, "size_multiple": MULTIPLE}, "threads": 1,
         "input": "JPEG q92 photo-like image (bench.record.sample_image)",
         "model": "stand-in: each region's crop inverted, at its work size (no model time)",
         "timing": "fastest of repeats, process CPU seconds", "repeats": repeats,
         "goal_rate": rec.GOAL_W1_IMAGES_PER_S, "assumption": ASSUMPTION},
    )  # fmt: skip
    for w, h in sizes:
        for kind in ("watermark", "scattered"):
            for feather in FEATHERS:
                r.rows.append(measure(w, h, kind, feather, repeats))
    big = sizes[-1]
    r.config["profile"] = {"row": f"{big[0]}x{big[1]} scattered feathered",
                           "top": profile_row(*big, "scattered")}  # fmt: skip
    for row in r.rows:
        key = f"{row['size']}_{row['mask']}_{row['edge']}"
        r.ratios[f"prepare_before_over_after_{key}"] = round(
            row["prepare_before_cpu_s"] / row["prepare_cpu_s"], 2
        )
        r.ratios[f"row_png1_before_over_after_{key}"] = round(
            row["row_png1_before_cpu_s"] / row["row_png1_cpu_s"], 2
        )
    r.goals = {f"cores_w1_png1_{row['size']}_{row['mask']}_{row['edge']}": row["cores_w1_png1"]
               for row in r.rows}  # fmt: skip
    r.notes = [
        ASSUMPTION,
        "*_before_cpu_s: the same step as it was before the cuts (bench/crop_before.py), on the "
        "same inputs in the same run; same_pixels: both gave the same crops, soft mask and "
        "pasted image, bit for bit.",
        "whatif_*: not what the job writes. OpenCV's PNG level 1 with zlib's RLE strategy, and "
        "the JPEG without optimized Huffman tables: the same pixels, other bytes; they size what "
        "a change of encoder settings would save against the file size it costs.",
        "paste_bytes_*: paste from the soft mask as the job carries it (one byte a pixel): "
        "passed as it is (after) against a float copy of the whole frame first (before).",
    ]
    return r
