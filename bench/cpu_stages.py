"""c1: the job's CPU stages on one core, per image size and output encoding.

Rows come from a local S3 server; each step runs the real code: fetch (Storage.read_bytes),
decode, prepare_batch (fetch + decode + mask + plan + cut), the model stage's own CPU work with an
identity model, and finish_batch (paste + encode + write back to S3) per output format. From the
per-row cost it works out how many cores one GPU needs to be fed at a given rate.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from batch_inpaint.config import JobConfig
from batch_inpaint.image import codec
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.models.base import Inpainter
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import Status

from . import record as rec
from .s3local import NOTE, LocalS3, local_s3, upload_rows

ENCODINGS = [  # (label, output_format, png_compress_level, quality)
    ("png-1", "png", 1, 95),
    ("png-6", "png", 6, 95),
    ("png-9", "png", 9, 95),
    ("webp-q90", "webp", 1, 90),
    ("jpeg-q95", "jpeg", 1, 95),
]
RATES = {"w1_goal_4_per_s": 4.0, "best_published_h100_2_per_s": 2.0, "h100_limit_11.8_per_s": 11.8}


class IdentityInpainter(Inpainter):
    """Returns its inputs: the model stage's own CPU work, without a model."""

    backend = "identity"
    model_id = "identity"
    native_size = 512

    def inpaint(self, images, masks, params, prompts, negative_prompts, seeds):
        k = params.num_images_per_prompt
        return [np.array(im) for im in images for _ in range(k)]


def best_per_row(fn, rows: int, repeats: int):
    """(CPU seconds, wall seconds) per row of the fastest of `repeats` calls, and the last call's
    result. CPU time is this process's (all its threads, not the S3 server's): what a core pays,
    whatever else runs on a shared machine; wall time is what this machine saw."""
    cpu, wall, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu = min(cpu, time.process_time() - c0)
        wall = min(wall, time.perf_counter() - t0)
    return (cpu / rows, wall / rows), out


def measure_size(s3: LocalS3, width: int, height: int, rows: int, repeats: int,
                 batch: int = 8) -> list[dict]:  # fmt: skip
    manifest = upload_rows(s3, f"c1/{width}x{height}", rows, width, height)
    storage = Storage(s3.options)
    base = JobConfig(manifest=s3.uri("c1/m.parquet"), output=s3.uri(f"c1/out-{width}"),
                     backend="opencv", device="cpu", endpoint_url=s3.endpoint, region="us-east-1",
                     mode="full")  # fmt: skip
    identity = IdentityInpainter()
    ctx = JobContext(config=base, storage=storage, manifest_base="", spec=identity.spec)
    batches = [manifest.slice(i, batch) for i in range(0, rows, batch)]
    images = manifest.column("image").to_pylist()
    uris = images + manifest.column("mask").to_pylist()
    storage.read_bytes(uris[0])  # connection set up outside the timings

    fetch, _ = best_per_row(lambda: [storage.read_bytes(u) for u in uris], rows, repeats)
    data = [storage.read_bytes(u) for u in images]
    decode, _ = best_per_row(lambda: [codec.decode_image_with_alpha(d) for d in data], rows,
                             repeats)  # fmt: skip
    prepare, prepared = best_per_row(lambda: [prepare_batch(t, ctx) for t in batches], rows,
                                     repeats)  # fmt: skip
    stage = ModelStage(ctx, inpainter=identity)
    model, modeled = best_per_row(lambda: [stage(t) for t in prepared], rows, repeats)
    status = {s for t in modeled for s in t.column("_bi_status").to_pylist()}
    assert status <= {Status.PENDING.value, Status.SKIPPED.value}, f"rows failed: {status}"
    pasted = codec.decode_image(data[0])  # what finish encodes: the identity model's output

    out = []
    for label, fmt, level, quality in ENCODINGS:
        cfg = JobConfig.from_dict({**base.to_dict(), "output_format": fmt,
                                   "png_compress_level": level, "jpeg_quality": quality,
                                   "output": s3.uri(f"c1/out-{width}-{label}")})  # fmt: skip
        fctx = JobContext(config=cfg, storage=storage, manifest_base="", spec=identity.spec)
        finish, finished = best_per_row(
            functools.partial(_finish_all, modeled, fctx), rows, repeats
        )
        bad = [s for t in finished for s in t.column("status").to_pylist() if s != Status.OK]
        assert not bad, f"finish_batch failed rows: {bad[:3]}"
        n = max(4, 32 // rows)
        enc = functools.partial(codec.encode_image, pasted, fmt, quality=quality,
                                png_compress_level=level)  # fmt: skip
        encode, blobs = best_per_row(lambda enc=enc, n=n: [enc() for _ in range(n)], n, repeats)
        cpu = prepare[0] + finish[0]  # CPU s per row on the CPU tasks; the model stage's apart
        row = {"size": f"{width}x{height}", "encoding": label, "fetch_cpu_s": fetch[0],
               "decode_cpu_s": decode[0], "prepare_cpu_s": prepare[0],
               "model_stage_cpu_s": model[0], "finish_cpu_s": finish[0],
               "encode_only_cpu_s": encode[0], "prepare_wall_s": prepare[1],
               "finish_wall_s": finish[1],
               "output_kb": round(float(np.mean([len(b) for b in blobs])) / 1024, 1),
               "rows_per_s_per_core": 1.0 / cpu}  # fmt: skip
        for name, rate in RATES.items():
            row[f"cores_{name}"] = round(rate * cpu, 2)
        out.append(row)
        print(rec.table([row]).splitlines()[-1], flush=True)
    return out


def _finish_all(tables, ctx) -> list:
    return [finish_batch(t, ctx) for t in tables]


def c1(args) -> rec.Record:
    import cv2

    cv2.setNumThreads(1)  # per core: one thread, as a Ray task with num_cpus=1 should use
    sizes = [(args.size, args.size)] if args.size else [(512, 512), (1920, 1080)]
    rows = args.rows or 24
    name = rec.device_name("cpu")
    r = rec.Record("c1", "CPU stages per core: fetch, decode, mask, paste, encode", name,
                   {"sizes": [f"{w}x{h}" for w, h in sizes], "rows_per_size": rows,
                    "input": "JPEG q92 photo-like images, PNG LaMa masks <= 10%",
                    "mode": "full", "threads": 1, "encodings": ENCODINGS, "rates": RATES,
                    "timing": "fastest of repeats; *_cpu_s = process CPU time per row"},
                   notes=[NOTE])  # fmt: skip
    s3 = local_s3()
    for w, h in sizes:
        n = rows if w * h <= 512 * 512 else max(4, rows // 4)
        r.rows += measure_size(s3, w, h, n, max(args.repeats, 3))
    r.notes += [
        "prepare includes the fetch of image and mask; finish includes paste, encode and the "
        "write to S3. rows_per_s_per_core = 1 / (prepare_cpu_s + finish_cpu_s): CPU time, so "
        "other work on a shared machine does not inflate it (wall times are listed too); the "
        "model stage's own CPU work (bytes to arrays and back) runs on the GPU actor, apart.",
        "cores_* = cores needed per GPU to feed that many rows/s (full-frame 512² is W1's case).",
    ]
    png1 = {x["size"]: x for x in r.rows if x["encoding"] == "png-1"}
    r.goals = {f"cores_for_4_per_s_png1_{k}": v["cores_w1_goal_4_per_s"] for k, v in png1.items()}
    return r
