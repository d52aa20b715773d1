"""Command-line flags derived from the options' field metadata (batch_inpaint/option.py): one flag
per field, its help, choices and default (printed once), grouped as the fields are. Used by
`batch-inpaint run`, jobs/*.py (through config.add_arguments) and `batch-inpaint inpaint`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from batch_inpaint.config import KEYS, JobConfig
from batch_inpaint.option import build, default, kind, meta, range_text, yaml_key

GROUPS = ("job", "model", "geometry and masks", "generation", "execution", "outputs", "storage")


def flag_name(f: dataclasses.Field) -> str:
    return "--" + yaml_key(f).replace("_", "-")


def add_flag(group: Any, f: dataclasses.Field, *, choices: bool = True) -> None:
    """A flag for field `f` with dest = its key and default None (unset: the next source wins)."""
    m = meta(f)
    base, _ = kind(f)
    d = default(f)
    notes = [range_text(m) if m.choices is None else None,
             None if d in (None, "", []) else f"default: {d}"]  # fmt: skip
    notes = "; ".join(n for n in notes if n)
    text = f"{m.help} ({notes})" if notes else m.help
    kw: dict[str, Any] = {"dest": yaml_key(f), "default": None, "help": text.replace("%", "%%")}
    if base == "bool":
        group.add_argument(flag_name(f), action=argparse.BooleanOptionalAction, **kw)
    elif base == "list":
        group.add_argument(flag_name(f), action="append", metavar="NAME", **kw)
    else:
        typ, metavar = {"int": (int, "N"), "float": (float, "X")}.get(base, (str, None))
        picks = m.choices if choices else None
        group.add_argument(flag_name(f), type=typ, choices=picks, metavar=metavar, **kw)


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    groups["job"].add_argument("--config", help="YAML file of job settings (flags override it)")
    for k in KEYS.values():
        add_flag(groups[k.group], k.field)


def job_config_from_args(args: argparse.Namespace) -> JobConfig:
    given = {n: getattr(args, n) for n in KEYS if getattr(args, n, None) is not None}
    if "allowed_buckets" in given:  # repeatable and/or comma-separated, as in `manifest` commands
        given["allowed_buckets"] = [b for v in given["allowed_buckets"] for b in v.split(",") if b]
    if getattr(args, "config", None):
        return JobConfig.from_yaml(args.config, **given)
    return JobConfig.from_dict(given, source="command line")


def add_option_flags(group: Any, cls: type) -> None:
    """The flags of a params dataclass's fields marked flag=True (`batch-inpaint inpaint`)."""
    for f in dataclasses.fields(cls):
        if meta(f).flag:
            add_flag(group, f)


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """`cls` from the flags add_option_flags made; a bad value's error names its flag."""
    given = {
        flag_name(f): getattr(args, yaml_key(f)) for f in dataclasses.fields(cls) if meta(f).flag
    }
    return build(cls, {k: v for k, v in given.items() if v is not None}, name=flag_name)
