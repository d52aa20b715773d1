"""Command-line flags derived from the options' field metadata (batch_inpaint/option.py): one flag
per field, its help, choices and default (printed once), grouped as the fields are. Used by
`batch-inpaint run`, jobs/*.py (add_arguments, config_from_args) and `batch-inpaint inpaint`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from batch_inpaint.config import KEYS, JobConfig
from batch_inpaint.option import build, default, kind, meta, near_miss, range_text, yaml_key

GROUPS = (
    "job",
    "model",
    "geometry and masks",
    "generation",
    "detection",
    "execution",
    "outputs",
    "storage",
)


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` and a flag per key, in groups (unset: the YAML file's, then the default)."""
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    groups["job"].add_argument("--config", help="YAML file of job settings (flags override it)")
    for k in KEYS.values():
        add_flag(groups[k.group], k.field)


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """The JobConfig the flags (over `--config`'s YAML file, over the defaults) describe."""
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


class ExamplesFormatter(argparse.HelpFormatter):
    """Wraps the description as usual; an epilog of examples keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def examples(*lines: str) -> dict[str, Any]:
    """add_parser keywords that end a command's help with these example command lines."""
    body = "".join(f"\n  {line}" for line in lines)
    return {"epilog": f"examples:{body}", "formatter_class": ExamplesFormatter}


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose "unrecognized arguments" error names the flag each unknown one
    probably meant, from the subcommand that was given. Subparsers are of the same class."""

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001 - argparse's signature
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._hints(parsed, extras)}")
        return parsed

    def error(self, message: str):  # noqa: ANN201 - argparse's signature
        """One line, not the whole usage (run's is 50 lines): the error (a wrong choice lists
        the choices), and where the flags are."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _hints(self, parsed: argparse.Namespace, extras: list[str]) -> str:
        flags = _flags_of(self, parsed)
        hints = []
        for extra in extras:
            name = extra.split("=", 1)[0]
            near = near_miss(name, flags) if name.startswith("--") else None
            if near:
                hints.append(f"{name}: did you mean {near}?")
        return f" ({'; '.join(hints)})" if hints else ""


def _flags_of(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> list[str]:
    """The long flags of the (sub)command `parsed` came from."""
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
            if chosen is not None:
                return flags + _flags_of(chosen, parsed)
    return flags
