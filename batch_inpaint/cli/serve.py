"""`batch-inpaint serve`: a local web page to try the model on one image at a time: upload or pick
a sample, paint over what should go, inpaint, and save the mask and parameters as a manifest row
for a job. Binds 127.0.0.1 unless --host says otherwise. See docs/web.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batch_inpaint.errors import ConfigError
from batch_inpaint.models.spec import BACKENDS
from batch_inpaint.vocab import ExitCode

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    from batch_inpaint.cli.flags import examples
    from batch_inpaint.web.inputs import (
        DEFAULT_IDLE_MINUTES,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_UPLOAD_MB,
    )

    p = sub.add_parser("serve", help="start a local web page to try the model",
                       description=__doc__, **examples(
                           "batch-inpaint serve --backend opencv    # no weights, any machine",
                           "batch-inpaint serve --backend lama --model big-lama.safetensors",
                           "batch-inpaint serve --host 0.0.0.0 --port 8080",
                       ))  # fmt: skip
    p.add_argument("--backend", default="diffusers", choices=BACKENDS,
                   help="diffusers: SD2-inpainting (needs its weights); opencv: classical, CPU, "
                        "no weights; tiny: random checkpoint, for tests; lama: LaMa weights "
                        "(--model FILE), no prompt (default: %(default)s)")  # fmt: skip
    p.add_argument("--model", default=None,
                   help="diffusers checkpoint: Hub id, local folder or s3:// prefix "
                        "(default: the backend's)")  # fmt: skip
    p.add_argument("--revision", default=None, help="model revision to pin (diffusers)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only)")  # fmt: skip
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help="largest upload accepted, in MB (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest image accepted, in pixels (default: %(default)s)")  # fmt: skip
    p.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MINUTES,
                   help="a browser session unused this long lets go of its image; the person "
                        "uploads it again (default: %(default)s)")  # fmt: skip
    p.add_argument("--manifest-root", default="manifests",
                   help="folder where 'Add to manifest' writes (default: ./%(default)s)")  # fmt: skip
    p.add_argument("--samples", default=None,
                   help="folder of sample images to offer (default: the bundled examples/images)")  # fmt: skip
    d = p.add_argument_group(
        "the Detect button (as `batch-inpaint detect`; a Hub id, local folder or s3:// prefix). "
        "Without flags, Detect finds text with the detector shipped in the package (offline; "
        "--text-detector none turns it off); other queries need --detector"
    )
    from batch_inpaint.cli.detect import add_model_flags

    add_model_flags(d, "e.g.")
    d.add_argument("--threshold", type=float,
                   help="keep detections scoring at least this, 0..1 (default: the detector's)")  # fmt: skip
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from batch_inpaint.models import load_inpainter
    from batch_inpaint.web.inputs import ServeSettings

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [1, 65535], got {args.port}")
    if args.threshold is not None:
        from batch_inpaint.detect.base import check_threshold

        check_threshold(args.threshold, "--threshold")
    settings = ServeSettings(
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        idle_minutes=args.idle_minutes,
        manifest_root=Path(args.manifest_root),
        samples_dir=Path(args.samples) if args.samples else None,
    )
    try:
        from batch_inpaint.web.app import launch  # imports gradio: after the cheap checks
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "gradio":
            raise ConfigError(
                "batch-inpaint serve needs gradio: pip install 'batch-inpaint[serve]'"
            ) from None
        raise

    if args.host not in LOOPBACK:
        print(f"serve: binding {args.host}: anyone who can reach this port can use the model and "
              "write manifests under --manifest-root", file=sys.stderr)  # fmt: skip
    from batch_inpaint.models.availability import check_model_available

    check_model_available(args.backend, args.model, args.revision)  # seconds, not Hub retries
    print(f"serve: loading the {args.backend} model...", file=sys.stderr)
    inpainter = load_inpainter(args.backend, args.model, revision=args.revision, device=args.device)
    if args.backend == "tiny":
        print("serve: the tiny checkpoint has random weights: results are noise "
              "(use --backend opencv or diffusers for real fills)", file=sys.stderr)  # fmt: skip
    provider = _load_provider(args)
    launch(inpainter, settings, host=args.host, port=args.port, provider=provider)
    return ExitCode.OK


def _load_provider(args: argparse.Namespace):
    """The Detect button's MaskProvider, loaded once for the server; None without a detector."""
    from batch_inpaint.web.detection import MODEL_FLAGS, load_provider

    if args.detector is None and args.text_detector is None:
        print("serve: Detect finds text with the shipped text detector (offline); for other "
              "queries (logo, watermark ...) pass --detector MODEL", file=sys.stderr)  # fmt: skip
    print("serve: loading the detector...", file=sys.stderr)
    models = {k: getattr(args, k) for k in MODEL_FLAGS}
    return load_provider(**models, threshold=args.threshold, device=args.device)
