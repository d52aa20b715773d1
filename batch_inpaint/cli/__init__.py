"""The `batch-inpaint` command. Each group of subcommands lives in its own module of this package
and registers itself through `add_parser(subparsers)`; `main` only dispatches."""

from __future__ import annotations

import argparse
import importlib
import sys

from batch_inpaint.errors import InpaintError

# module name -> registers one or more subcommands; imported lazily so `--help` stays fast
# and a missing optional dependency only breaks its own command.
COMMAND_MODULES = ("inpaint", "manifest", "run", "serve", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-inpaint",
        description="Inpaint images at scale with Stable Diffusion inpainting models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__name__}.{name}"):
                continue  # this group of commands is not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InpaintError as exc:
        print(f"batch-inpaint {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
