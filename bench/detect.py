"""Detection workloads (batch_inpaint.detect, what `batch-inpaint detect` runs per batch):

- d1 (CPU): seconds per 512² row for each provider (Grounding DINO with its queries, the PP-OCR
  text detector, SAM refining 3 boxes), batch 1, fp32, every core; the tiny random checkpoints
  and the real architectures with random weights built from their published configs
  (grounding-dino-tiny: Swin-T + BERT-base, 900 queries at 800 px; PP-OCRv5 mobile det; SAM
  ViT-B at 1024 px). Random weights compute exactly what real ones do, so the times hold; what
  they detect means nothing.
- d2 (GPU): the same providers' throughput at 512², batch 1 and --batch (8), in the default
  CUDA dtype (fp16), with peak memory. Refuses to run without CUDA (a smoke run: --device cpu
  --tiny).
"""

from __future__ import annotations

from . import record as rec

QUERIES = ["watermark", "logo", "text"]
SAM_BOXES = [[40.0, 40.0, 200.0, 160.0], [260.0, 300.0, 480.0, 420.0], [10.0, 420.0, 500.0, 500.0]]


def providers(tiny: bool, device: str, dtype=None):
    """[(name, architecture, call(images))] for each provider, random weights."""
    from batch_inpaint.detect.grounding import GroundingDinoDetector
    from batch_inpaint.detect.segment import SamSegmenter
    from batch_inpaint.detect.text import PPOCRTextDetector
    from batch_inpaint.detect.tiny import build_detector, build_segmenter, build_text_detector

    real = not tiny
    arch = "tiny random" if tiny else "real architecture, random weights"
    gd = GroundingDinoDetector.from_model(*build_detector(real), model_id="grounding-dino",
                                          device=device, dtype=dtype)  # fmt: skip
    pre = {} if real else {"limit_side_len": 128}
    ocr = PPOCRTextDetector.from_model(build_text_detector(real), model_id="pp-ocr",
                                       device=device, dtype=dtype, **pre)  # fmt: skip
    sam = SamSegmenter.from_model(*build_segmenter(real), model_id="sam", device=device,
                                  dtype=dtype)  # fmt: skip
    return [
        ("grounding-dino", arch, lambda ims: gd.detect(ims, [QUERIES] * len(ims), 0.3)),
        ("pp-ocr text", arch, lambda ims: ocr.detect(ims, [["text"]] * len(ims))),
        ("sam (3 boxes)", arch, lambda ims: sam.segment(ims, [SAM_BOXES] * len(ims))),
    ], {"grounding-dino": gd.model, "pp-ocr text": ocr.model, "sam (3 boxes)": sam.model}


def _params(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def d1(args) -> rec.Record:
    device = "cpu"
    size = args.size or 512
    kinds = [True] if args.tiny else [True, False]
    r = rec.Record("d1", f"detection on the CPU: seconds per {size}² row, batch 1, fp32",
                   rec.device_name(device), {"size": size, "batch": 1, "dtype": "fp32",
                   "queries": QUERIES, "warmup": args.warmup, "repeats": args.repeats,
                   "threads": rec.cores()})  # fmt: skip
    images = [rec.sample_image(size, size, 0)]
    for tiny in kinds:
        calls, models = providers(tiny, device)
        for name, arch, call in calls:
            # the full-size models are slow on a CPU: one untimed and one timed call at most
            warm, reps = (args.warmup, args.repeats) if tiny else (min(args.warmup, 1), 1)
            sec, _ = rec.timed(lambda c=call: c(images), device, warm, reps)
            r.rows.append({"provider": name, "weights": arch, "params_m": _params(models[name]),
                           "s_per_row": sec, "rows_per_s": 1 / sec})  # fmt: skip
    r.notes.append("Real architectures with random weights: the compute of the real models "
                   "(Grounding DINO resizes a 512² image to 800², SAM to 1024²); detections "
                   "themselves are meaningless. Other load on a shared machine shows in "
                   "load_average.")  # fmt: skip
    return r


def d2(args) -> rec.Record:
    device = rec.resolve_device(args.device)
    if not device.startswith("cuda") and not (args.device == "cpu" and args.tiny):
        raise rec.NeedsGPU("d2")
    size, batch = args.size or 512, args.batch or 8
    name = rec.device_name(device)
    dtype = None if device.startswith("cuda") else "fp32"  # None: fp16 on CUDA
    r = rec.Record("d2", f"detection throughput at {size}²: batch 1 vs {batch}", name,
                   {"size": size, "batches": [1, batch], "queries": QUERIES,
                    "dtype": "fp16" if device.startswith("cuda") else "fp32",
                    "tiny": bool(args.tiny), "warmup": args.warmup,
                    "repeats": args.repeats})  # fmt: skip
    calls, models = providers(bool(args.tiny), device, dtype)
    for pname, arch, call in calls:
        for b in sorted({1, batch}):
            images = [rec.sample_image(size, size, i) for i in range(b)]
            sec, peak = rec.timed(lambda c=call, i=images: c(i), device, args.warmup,
                                  args.repeats)  # fmt: skip
            r.rows.append({"provider": pname, "weights": arch, "params_m": _params(models[pname]),
                           "batch": b, "s_per_batch": sec, "images_per_s": b / sec,
                           "peak_gib": peak})  # fmt: skip
    for pname in dict.fromkeys(x["provider"] for x in r.rows):
        mine = [x for x in r.rows if x["provider"] == pname]
        r.ratios[f"{pname}: batch {batch} vs 1"] = round(
            mine[-1]["images_per_s"] / mine[0]["images_per_s"], 2
        )
    r.notes.append("Times include each provider's own preprocessing on the CPU (resize, "
                   "normalise) and post-processing, as `batch-inpaint detect` runs them.")  # fmt: skip
    return r


SHAPES = {"512²": (512, 512), "1920x1080": (1080, 1920)}


def d3(args) -> rec.Record:
    """The shipped text detector (PP-OCRv6 small det from the rapidocr wheel, onnxruntime, real
    weights): rows/s at 512² and 1920x1080, detection alone (resize, model, boxes), with one
    onnxruntime thread (per core) and with every core; photos with text lines drawn. With
    --rows N, also N rows per shape through `run --detect text --verify --backend opencv` in
    process (every core)."""
    import os

    from batch_inpaint.detect.shipped import OnnxTextDetector

    from .clean_text import render

    shapes = {f"{args.size}²": (args.size, args.size)} if args.size else SHAPES
    r = rec.Record("d3", "shipped text detector (onnxruntime, real weights): rows/s per core",
                   rec.device_name("cpu"), {"shapes": list(shapes), "warmup": args.warmup,
                   "repeats": args.repeats, "cores": rec.cores()})  # fmt: skip
    was = os.environ.get("OMP_NUM_THREADS")
    try:
        for threads in sorted({1, rec.cores()}):
            os.environ["OMP_NUM_THREADS"] = str(threads)  # read when the session is made
            det = OnnxTextDetector()
            r.config["detector"] = det.describe()
            for name, (h, w) in shapes.items():
                image, lines, _ = render(rec.sample_image(h, w, 0), 7)
                sec, _ = rec.timed(lambda im=image, d=det: d.detect([im], [["text"]]), "cpu",
                                   args.warmup, args.repeats)  # fmt: skip
                found = len(det.detect([image], [["text"]])[0])
                r.rows.append({"shape": name, "model_input": "x".join(map(str, det.working_size(h, w))),
                               "threads": threads, "s_per_row": sec, "rows_per_s": 1 / sec,
                               "rows_per_s_per_core": 1 / sec / threads,
                               "lines_drawn": len(lines), "boxes": found})  # fmt: skip
    finally:
        if was is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = was
    if args.rows:
        r.rows += _job_rows(shapes, args.rows)
    r.notes.append("The shorter side is brought up to 736 px (rapidocr's rule), so a 512² row "
                   "runs at 736²; 1920x1080 runs at its own size. Other load on a shared "
                   "machine shows in load_average.")  # fmt: skip
    return r


def _job_rows(shapes: dict, n: int) -> list[dict]:
    """`run --detect text --verify --backend opencv` in process on n captioned rows per shape:
    rows/s end to end (read, detect, fill, write, verify) and the stages' seconds per row."""
    import tempfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.run import run_job

    from .clean_text import render

    out = []
    for name, (h, w) in shapes.items():
        base = Path(tempfile.mkdtemp(prefix="d3-job-"))
        root = base / "in"  # the output lies apart from what the manifest reads
        root.mkdir()
        for i in range(n):
            Image.fromarray(render(rec.sample_image(h, w, i), i)[0]).save(root / f"{i}.png")
        pq.write_table(pa.table({"id": [str(i) for i in range(n)],
                                 "image": [f"{i}.png" for i in range(n)]}), root / "m.parquet")  # fmt: skip
        cfg = JobConfig(manifest=str(root / "m.parquet"), output=str(base / "out"),
                        backend="opencv", detect=["text"], verify=True, resume=False)  # fmt: skip
        summary = run_job(cfg, echo=lambda *_: None)
        stages = summary.get("stage_seconds_total") or {}
        out.append({"shape": name, "job": "detect -> opencv -> verify", "rows": n,
                    "rows_per_s": summary.get("rows_per_s"),
                    "rows_per_s_per_core": (summary.get("rows_per_s") or 0) / rec.cores(),
                    **{f"{k}_per_row": v / n for k, v in stages.items()}})  # fmt: skip
    return out
