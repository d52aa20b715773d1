"""`batch-inpaint detect --manifest M --output O --detect "watermark,text"`: find what to remove
in each row's image, in process (no Ray), and write the masks under O/masks/ and O/manifest.parquet,
a manifest `batch-inpaint run` accepts as it is. Review the masks, then run. docs/masks.md."""

from __future__ import annotations

import argparse
import time


def add_parser(sub) -> None:
    from batch_inpaint.cli.flags import examples

    p = sub.add_parser(
        "detect",
        help="find watermarks, text, logos... and write their masks and a manifest for `run`",
        description="Detect what the queries name in every row's image and write each mask to "
        "OUTPUT/masks/<id>.png and OUTPUT/manifest.parquet: the input rows with `mask` set to the "
        "mask (united with the row's own mask, if it has one), `mask_boxes` with the boxes, a "
        "`detections` column (label, score, box) and `detect_note` where nothing was found. "
        "Review the masks, then `batch-inpaint run --manifest OUTPUT/manifest.parquet ...`. "
        "OUTPUT must lie apart from the manifest, its images and masks, and be new, empty or an "
        "earlier detect's output (which a rerun replaces).",
        **examples(
            "batch-inpaint detect --manifest m.parquet --output det/ --detect 'watermark,text'",
            "batch-inpaint detect --manifest m.parquet --output det/ --detect logo --detector DIR",
            "batch-inpaint run --manifest det/manifest.parquet --output out/    # after review",
        ),
    )
    a = p.add_argument
    a("--manifest", required=True, help="the manifest to detect on (file or folder, any URI)")
    a("--output", required=True, help="folder or prefix for masks/ and manifest.parquet")
    a("--detect", metavar="QUERIES", action="append",
      help="things to find, comma-separated or repeated, e.g. 'watermark,text,logo' (a row's "
      "`detect` column replaces them for that row)")  # fmt: skip
    a("--allow-non-empty-output", action="store_true",
      help="let a first detect write into a non-empty OUTPUT that no detect made, if none of "
      "masks/, manifest.parquet, detect.json is there yet (it never overwrites anything)")  # fmt: skip
    m = p.add_argument_group("models (a Hub id, a local folder or an s3:// prefix; 'none': off)")
    add_model_flags(m, "default:")
    m.add_argument("--text-queries", default="text,caption,subtitles",
                   help="queries that go to the text detector (default: %(default)s)")  # fmt: skip
    m.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N (default: %(default)s)")  # fmt: skip
    m.add_argument("--dtype", default="auto",
                   help="auto (fp16 on CUDA, fp32 on the CPU) | fp16 | bf16 | fp32")  # fmt: skip
    m.add_argument("--cache-dir", help="where downloaded weights are kept")
    from batch_inpaint.detect import grounding, text

    d = p.add_argument_group("detections and masks")
    d.add_argument("--threshold", type=float,
                   help="keep the detector's boxes scoring at least this, 0..1 (default: "
                   f"{grounding.DEFAULT_THRESHOLD}; with --detector none, the text detector's)")  # fmt: skip
    d.add_argument(
        "--text-threshold",
        type=float,
        help="keep text boxes whose mean text probability is at least this (default: "
        f"{text.DEFAULT_THRESHOLD}; a PP-OCR checkpoint's: {text.CHECKPOINT_THRESHOLD})",
    )
    d.add_argument("--text-min-confidence", type=float,
                   help="keep only text boxes the shipped recogniser reads with at least this "
                   "confidence, 0..1 (drops stripes and textures; default: all)")  # fmt: skip
    d.add_argument(
        "--max-detections",
        type=int,
        default=100,
        help="at most N detections per image and detector (default: %(default)s)",
    )
    d.add_argument("--box-dilate", type=int, default=0, metavar="N",
                   help="grow each detection's mask by N px before writing it (run's own "
                   "--dilate applies again at run time; default: %(default)s)")  # fmt: skip
    d.add_argument("--batch-size", type=int, default=4,
                   help="images per forward pass (default: %(default)s)")  # fmt: skip

    from batch_inpaint.cli.flags import add_flag
    from batch_inpaint.cli.manifest import add_storage_flags
    from batch_inpaint.params import MaskOptions

    g = p.add_argument_group("reading the rows' own masks (as `run` reads them)")
    for f in MaskOptions.__dataclass_fields__.values():
        if f.name in ("threshold", "invert", "resize"):
            add_flag(g, f)
    add_storage_flags(p)
    p.set_defaults(func=_detect)


def add_model_flags(group, word: str) -> None:
    """--detector, --text-detector, --segmenter and their revisions (`detect` and `serve`);
    `word`: "default:" where the named models load when unset, "e.g." where nothing does."""
    from batch_inpaint.detect.grounding import DEFAULT_DETECTOR
    from batch_inpaint.detect.text import DEFAULT_TEXT_DETECTOR

    group.add_argument("--detector", help="open-vocabulary detector, Grounding DINO "
                       f"({word} {DEFAULT_DETECTOR})")  # fmt: skip
    group.add_argument("--detector-revision", help="Hub commit to pin the detector to")
    group.add_argument("--text-detector", help="text detector for the text queries: 'rapidocr', "
                       "PP-OCRv6 small det shipped in the rapidocr wheel (offline), or a PP-OCR "
                       "det checkpoint, e.g. PaddlePaddle/PP-OCRv6_medium_det_safetensors "
                       f"({word} {DEFAULT_TEXT_DETECTOR})")  # fmt: skip
    group.add_argument("--text-detector-revision", help="Hub commit to pin the text detector to")
    group.add_argument("--segmenter", help="SAM checkpoint: refine boxes into pixel masks "
                       "(e.g. facebook/sam-vit-base; default: none, the boxes are the mask)")  # fmt: skip
    group.add_argument("--segmenter-revision", help="Hub commit to pin the segmenter to")


def _detect(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from batch_inpaint.cli.flags import options_from_args
    from batch_inpaint.cli.manifest import read_manifest, storage_from_args
    from batch_inpaint.detect.base import check_threshold
    from batch_inpaint.detect.provider import MaskProvider
    from batch_inpaint.detect.queries import QUERY_COLUMN, parse_queries, row_queries
    from batch_inpaint.errors import ConfigError
    from batch_inpaint.job.detect_rows import check_output, claim_output, detect_manifest
    from batch_inpaint.params import MaskOptions

    # 1. Check every option before loading anything
    queries = parse_queries(",".join(args.detect or []), "--detect")
    for name in ("threshold", "text_threshold", "text_min_confidence"):
        if getattr(args, name) is not None:
            check_threshold(getattr(args, name), "--" + name.replace("_", "-"))
    if args.max_detections < 1 or args.batch_size < 1 or not 0 <= args.box_dilate <= 512:
        raise ConfigError("--max-detections and --batch-size must be >= 1, --box-dilate 0..512")
    mask_options = options_from_args(MaskOptions, _mask_flags(args))
    storage = storage_from_args(args)
    # no mask column is fine: the detections are the masks (a row without queries says so)
    manifest = read_manifest(args.manifest, storage, needs_mask=False)
    wanted = set(queries)
    if QUERY_COLUMN in manifest.table.column_names:
        for row in manifest.table.select(["id", QUERY_COLUMN]).to_pylist():
            wanted.update(row_queries(row, queries))
    if not wanted:
        raise ConfigError(f"nothing to detect: give --detect 'watermark,text' or a "
                          f"'{QUERY_COLUMN}' column in the manifest")  # fmt: skip
    # never over the inputs or files detect did not write (run's rules, job/driver/guard.py)
    state = check_output(args.manifest, manifest, args.output, args.allow_non_empty_output)

    # 2. Models, then the rows; transformers' warnings (e.g. a sequence longer than the text
    # input, which fails that row alone and says so in its note) stay off the terminal
    from transformers.utils import logging as hf_logging

    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        provider = MaskProvider.load(
            detector=args.detector, detector_revision=args.detector_revision,
            text_detector=args.text_detector, text_detector_revision=args.text_detector_revision,
            text_queries=parse_queries(args.text_queries, "--text-queries"),
            text_threshold=args.text_threshold,
            text_min_confidence=args.text_min_confidence, segmenter=args.segmenter,
            segmenter_revision=args.segmenter_revision, queries=sorted(wanted),
            device=args.device, dtype=None if args.dtype == "auto" else args.dtype,
            storage=storage, cache_dir=args.cache_dir, threshold=args.threshold,
            max_detections=args.max_detections, dilate=args.box_dilate,
        )  # fmt: skip
        t1 = time.perf_counter()
        claim_output(manifest.storage, args.output, state)
        summary = detect_manifest(manifest, args.output, provider, queries,
                                  mask_options=mask_options, batch_size=args.batch_size)  # fmt: skip
    finally:
        hf_logging.set_verbosity(was)
    c = summary["counts"]
    print(f"{c['rows']} rows: {c['found']} with a mask from detections, {c['nothing_found']} "
          f"with nothing found, {c['error']} errors, {c['no_queries']} without queries")  # fmt: skip
    print(f"masks: {summary['masks']}/\nmanifest: {summary['manifest']}")
    print(f"review the masks, then: batch-inpaint run --manifest {summary['manifest']} "
          "--output OUT")  # fmt: skip
    print(f"timings: load models {t1 - t0:.2f}s, detect {time.perf_counter() - t1:.2f}s")
    return 0


def _mask_flags(args: argparse.Namespace) -> argparse.Namespace:
    """The mask flags under the names options_from_args reads (unset ones stay unset)."""
    ns = argparse.Namespace(**vars(args))
    for key in ("dilate", "feather"):
        setattr(ns, key, None)
    return ns
