"""Every default printed in `--help` is the code's (issue 25, defect 5: `--retries` said 5, the code
used 7): help texts take their defaults from the options source (option fields, dataclass
defaults, module constants), and this test reads each one back against the code."""

from __future__ import annotations

import argparse
import re

import pytest

from batch_inpaint.cli import build_parser, results
from batch_inpaint.config import KEYS
from batch_inpaint.detect import grounding, text
from batch_inpaint.job.driver.estimate import DEFAULT_SAMPLE
from batch_inpaint.option import default
from batch_inpaint.storage.options import StorageOptions

# printed default -> where the code keeps it, for flags whose argparse default is None
CODE = {
    "retries": StorageOptions.__dataclass_fields__["retries"].default,
    "threshold": grounding.DEFAULT_THRESHOLD,
    "text_threshold": text.DEFAULT_THRESHOLD,
    "detector": grounding.DEFAULT_DETECTOR,
    "text_detector": text.DEFAULT_TEXT_DETECTOR,
    "sample": DEFAULT_SAMPLE,
    "columns": ",".join(results.DEFAULT_COLUMNS),
}
# defaults said in words, not values: (command, dest) -> the words
WORDS = {("serve", "model"): "the backend's", ("serve", "samples"): "the bundled",
         ("serve", "threshold"): "the detector's", ("serve", "segmenter"): "none",
         ("detect", "segmenter"): "none", ("report", "side_by_side"): "side_by_side/",
         ("serve", "manifest_root"): "./manifests",
         ("results", "limit"): f"{results.TABLE_LIMIT} for a table",
         ("detect", "text_min_confidence"): "all"}  # fmt: skip
PRINTED = re.compile(r"\bdefault:? ([^;()]+?)(?:[;)]|, |$)")


def _actions(parser: argparse.ArgumentParser, name: str = ""):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, p in a.choices.items():
                yield from _actions(p, f"{name} {sub}".strip())
        elif a.help:
            yield name, a


def _printed(parser: argparse.ArgumentParser, a: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(a) if "%(" in a.help else a.help


def test_every_printed_default_is_the_codes():
    parser = build_parser()
    checked, wrong = 0, []
    for name, a in _actions(parser):
        text = _printed(parser, a)
        for value in PRINTED.findall(text):
            value = value.strip().strip("'")
            command = name.split()[0] if name else ""
            if (command, a.dest) in WORDS:
                assert value.startswith(WORDS[command, a.dest]), (name, a.dest, value)
                continue
            if a.default is not None and a.default is not argparse.SUPPRESS:
                want = a.default
            elif a.dest in KEYS and name in ("run", "inpaint"):
                want = default(KEYS[a.dest].field)
            elif a.dest in CODE:
                want = CODE[a.dest]
            elif _option_default(a.dest) is not _NONE:  # the params dataclasses' fields
                want = _option_default(a.dest)
            else:
                wrong.append(f"{name} {a.option_strings}: default {value!r} has no code source")
                continue
            checked += 1
            if value != str(want):
                wrong.append(f"{name} {a.option_strings}: help says {value!r}, code has {want!r}")
    assert not wrong, "\n".join(wrong)
    assert checked > 80  # every command's flags were read


_NONE = object()


def _option_default(dest: str):
    from batch_inpaint.option import yaml_key
    from batch_inpaint.params import GenerationParams, GeometryOptions, MaskOptions

    for cls in (GenerationParams, GeometryOptions, MaskOptions):
        for f in cls.__dataclass_fields__.values():
            if yaml_key(f) == dest:
                return default(f)
    return _NONE


def test_retries_help_says_the_storage_default(capsys):
    from batch_inpaint.storage.options import StorageOptions

    with pytest.raises(SystemExit):
        build_parser().parse_args(["manifest", "validate", "--help"])
    out = capsys.readouterr().out
    assert f"(default: {StorageOptions().retries})" in " ".join(out.split())


def test_the_mask_size_message_names_the_flag():
    import numpy as np

    from batch_inpaint.errors import SizeMismatchError
    from batch_inpaint.image.masks import fit_mask

    with pytest.raises(SizeMismatchError, match="--mask-resize"):
        fit_mask(np.zeros((4, 4), bool), (8, 8))
