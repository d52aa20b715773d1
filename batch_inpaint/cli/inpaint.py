"""`batch-inpaint inpaint IMAGE MASK -o OUT`: one image, in process, no Ray. Also
`batch-inpaint make-tiny-model DIR`: write the tiny random checkpoint for offline tries and tests."""

from __future__ import annotations

import argparse
import time
from pathlib import PurePosixPath

from batch_inpaint.params import GenerationParams, GeometryOptions, InpaintOptions, MaskOptions


def add_parser(sub) -> None:
    from batch_inpaint.cli.flags import examples

    p = sub.add_parser(
        "inpaint",
        help="inpaint one image where its mask is white",
        description="Inpaint IMAGE where MASK is white and write the result to OUT. Every pixel "
        "outside the (dilated, feathered) mask is the input's, bit for bit. IMAGE, MASK and OUT "
        "may be local paths or object-storage URIs (s3://...).",
        **examples(
            "batch-inpaint inpaint photo.jpg mask.png -o out.png --backend opencv",
            "batch-inpaint inpaint photo.jpg mask.png -o out.png --prompt 'a brick wall' --seed 1",
            "batch-inpaint inpaint s3://b/p.jpg s3://b/m.png -o s3://b/out.webp --mode crop",
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="input image (png, jpeg, webp, ...)")
    p.add_argument("mask", metavar="MASK", help="mask image: white (above --mask-threshold) = fill")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output image; its suffix picks the format (.png, .jpg, .webp)")  # fmt: skip

    # Option flags come from the fields' metadata (params.py, config.py), as `run`'s do.
    from batch_inpaint.cli.flags import add_flag, add_option_flags
    from batch_inpaint.config import KEYS

    add_option_flags(p.add_argument_group("generation"), GenerationParams)
    add_option_flags(p.add_argument_group("mask"), MaskOptions)
    add_option_flags(p.add_argument_group("geometry"), GeometryOptions)
    mo = p.add_argument_group("model")
    for k in KEYS.values():
        if k.group == "model":  # in process a GPU may be named (cuda:1): load_inpainter checks it
            add_flag(mo, k.field, choices=k.name != "device")
    mo.add_argument("--cache-dir", default=None, help="where downloaded weights are kept")
    from batch_inpaint.cli.manifest import add_storage_flags

    add_storage_flags(p)
    p.set_defaults(func=_inpaint)

    t = sub.add_parser(
        "make-tiny-model",
        help="write a tiny random-weight model (inpainting or detection) for tests and "
        "offline tries",
        description="Write a random-weight checkpoint of the --kind to DIR (same bytes every "
        "time): an inpainting model (diffusers: a ~7 MB Stable Diffusion inpainting checkpoint "
        "for --backend diffusers --model DIR; lama: for --backend lama) or a detection model "
        "(detector, text-detector, segmenter: for `detect` and `run --detect`). Its outputs are "
        "noise: it exercises the plumbing.",
        **examples(
            "batch-inpaint make-tiny-model tiny/    # then run ... --backend diffusers --model tiny/",
            "batch-inpaint make-tiny-model --kind detector det/    # for detect --detector det/",
        ),
    )
    t.add_argument("dir", metavar="DIR", help="new or empty directory")
    t.add_argument("--kind", default="diffusers",
                   choices=("diffusers", "sdxl", "lama", "detector", "text-detector", "segmenter"),
                   help="diffusers: the ~7 MB SD checkpoint; sdxl: a ~9 MB SDXL-inpainting one "
                   "(two text encoders), for --backend diffusers; lama: a random-weight LaMa of the "
                   "real architecture (~100 MB), for --backend lama; detector, text-detector, "
                   "segmenter: tiny Grounding DINO, PP-OCR det and SAM for `batch-inpaint detect` "
                   "and `run --detect` (default: diffusers)")  # fmt: skip
    t.set_defaults(func=_make_tiny)


def _inpaint(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from batch_inpaint.cli.flags import options_from_args
    from batch_inpaint.cli.manifest import storage_from_args
    from batch_inpaint.config import KEYS
    from batch_inpaint.image.codec import decode_image, encode_image
    from batch_inpaint.image.inpaint import inpaint_array
    from batch_inpaint.image.masks import mask_from_image
    from batch_inpaint.models import load_inpainter
    from batch_inpaint.option import default

    # 1. Check every option before loading anything
    fmt = _output_format(args.output)
    options = InpaintOptions(
        generation=options_from_args(GenerationParams, args),
        mask=options_from_args(MaskOptions, args),
        geometry=options_from_args(GeometryOptions, args),
    )
    model = {n: getattr(args, n) if getattr(args, n) is not None else default(k.field)
             for n, k in KEYS.items() if k.group == "model"}  # fmt: skip
    storage = storage_from_args(args)

    # 2. Inputs, then the model
    image = decode_image(storage.read_bytes(args.image))
    h, w = image.shape[:2]
    mask = mask_from_image(storage.read_bytes(args.mask), (w, h), options.mask)
    t1 = time.perf_counter()
    inpainter = load_inpainter(
        model["backend"],
        model["model"],
        revision=model["revision"],
        device=model["device"],
        dtype=None if model["dtype"] == "auto" else model["dtype"],
        attention=model["attention"],
        vae_tiling=model["vae_tiling"],
        compile=model["torch_compile"],
        storage=storage,
        cache_dir=args.cache_dir,
        vae=model["vae"],
    )
    t2 = time.perf_counter()

    # 3. Inpaint and write
    result = inpaint_array(image, mask, inpainter, options)
    t3 = time.perf_counter()
    outputs = _output_names(args.output, len(result.images))
    for name, rgb in zip(outputs, result.images, strict=True):
        storage.write_bytes(name, encode_image(rgb, fmt))
        print(f"wrote {name}")
    t4 = time.perf_counter()
    if result.status == "skipped":
        print("nothing was masked: the output is the input, unchanged")
    print(f"seed {result.seed}")
    parts = {"read": t1 - t0, "load model": t2 - t1, **result.timings, "write": t4 - t3}
    print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items())
          + f", total {t4 - t0:.2f}s")  # fmt: skip
    return 0


def _output_format(out: str) -> str:
    from batch_inpaint.errors import ConfigError
    from batch_inpaint.image.codec import ENCODE_FORMATS

    suffix = PurePosixPath(out.split("?")[0]).suffix.lower().lstrip(".")
    if suffix not in ENCODE_FORMATS:
        raise ConfigError(f"output {out!r} must end in one of .{', .'.join(ENCODE_FORMATS)}")
    return suffix


def _output_names(out: str, n: int) -> list[str]:
    if n == 1:
        return [out]
    stem, dot, suffix = out.rpartition(".")
    return [f"{stem}-{j}{dot}{suffix}" for j in range(n)]


def _make_tiny(args: argparse.Namespace) -> int:
    from batch_inpaint.models.tiny import make_tiny_model

    t0 = time.perf_counter()
    if getattr(args, "kind", "diffusers") in ("detector", "text-detector", "segmenter"):
        from batch_inpaint.detect.tiny import make_tiny

        path = make_tiny(args.kind, args.dir)
        flag = {"detector": "--detector", "text-detector": "--text-detector"}.get(args.kind)
        flag = f"{flag or '--segmenter'} {path}"
        print(f"wrote a tiny random {args.kind} to {path} ({time.perf_counter() - t0:.1f}s)")
        print(f"use it with: batch-inpaint detect ... {flag}\n"
              f"         or: batch-inpaint run --detect QUERIES ... {flag}")  # fmt: skip
        return 0
    if getattr(args, "kind", "diffusers") == "sdxl":
        from batch_inpaint.models.tiny_sdxl import make_tiny_sdxl

        path = make_tiny_sdxl(args.dir)
        print(f"wrote a tiny random SDXL-inpainting checkpoint to {path} "
              f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
        print(f"use it with: batch-inpaint inpaint IMAGE MASK -o OUT --model {path}")
        return 0
    if getattr(args, "kind", "diffusers") == "lama":
        from batch_inpaint.models.lama_tiny import make_tiny_lama

        path = make_tiny_lama(args.dir)
        print(f"wrote a random-weight LaMa to {path} ({time.perf_counter() - t0:.1f}s)")
        print(f"use it with: batch-inpaint inpaint IMAGE MASK -o OUT --backend lama --model {path}")
        return 0
    path = make_tiny_model(args.dir)
    print(f"wrote the tiny checkpoint to {path} ({time.perf_counter() - t0:.1f}s)")
    print(
        f"use it with: batch-inpaint inpaint IMAGE MASK -o OUT --backend diffusers --model {path}"
    )
    return 0
