"""Options defined once. A dataclass field made with `option(...)` carries its help text, its
YAML key and flag name, its choices and range, and whether a manifest row may override it; the
YAML keys, command-line flags, help, manifest override columns and every value check are derived
from that, here and in config.py, so a rule is written once."""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from batch_inpaint.errors import ConfigError

_KEY = "batch_inpaint.option"


@dataclass(frozen=True)
class Meta:
    help: str
    key: str | None = None  # YAML key and flag (with dashes) where it differs from the field name
    choices: tuple | None = None
    lo: float | None = None  # range, inclusive unless lo_open / hi_open
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    multiple: int | None = None
    row: bool = False  # a manifest column of the field's own name overrides it per row
    job: bool = True  # a job setting: a JobConfig key and a `run` flag
    flag: bool = True  # a flag of `batch-inpaint inpaint` (per-image options only)
    group: str | None = None  # JobConfig's own fields: their `run --help` group
    check: Callable[[Any], str | None] | None = None  # another rule: why a value fails, or None


def option(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **meta):
    """A dataclass field with option metadata (see Meta)."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={_KEY: Meta(**meta)})  # fmt: skip


def meta(f: dataclasses.Field) -> Meta | None:
    return f.metadata.get(_KEY)


def yaml_key(f: dataclasses.Field) -> str:
    m = meta(f)
    return (m and m.key) or f.name


def default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


class OptionError(ConfigError):
    """A value an option refuses; `field` is the dataclass field, `reason` says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field} {reason}")
        self.field, self.reason = field, reason

    def __reduce__(self):  # picklable, for Ray workers
        return type(self), (self.field, self.reason)


def kind(f: dataclasses.Field) -> tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool' | 'list', optional) from the annotation's text."""
    text = str(f.type)
    return text.replace(" | None", "").split("[")[0], "None" in text


_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string",
               "bool": "true or false", "list": "a list of strings"}  # fmt: skip


def _num(x: float) -> str:
    if isinstance(x, int) and x > 2**32 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def range_text(m: Meta) -> str | None:
    if m.multiple is not None:
        return f"a multiple of {m.multiple} and >= {_num(m.lo)}"
    if m.lo is not None and m.hi is not None:
        lb, rb = "(" if m.lo_open else "[", ")" if m.hi_open else "]"
        return f"in {lb}{_num(m.lo)}, {_num(m.hi)}{rb}"
    if m.lo is not None:
        return f"{'>' if m.lo_open else '>='} {_num(m.lo)}"
    return None


def _in_range(m: Meta, v: float) -> bool:
    # Written so that NaN fails every comparison.
    if m.lo is not None and not (v > m.lo if m.lo_open else v >= m.lo):
        return False
    if m.hi is not None and not (v < m.hi if m.hi_open else v <= m.hi):
        return False
    return m.multiple is None or v % m.multiple == 0


def checked(f: dataclasses.Field, value: Any) -> Any:
    """The value as stored (ints widened to float, tuples to lists); OptionError if refused."""
    m = meta(f)
    base, optional = kind(f)
    if value is None:
        if optional:
            return None
        raise OptionError(f.name, f"must be set (got none); expected {_TYPE_WORDS[base]}")
    if base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif base == "float":
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif base == "str":
        ok = isinstance(value, str)
    else:  # list of strings
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = list(value) if ok else value
    if not ok:
        got = f"{type(value).__name__} {value!r}"
        raise OptionError(f.name, f"must be {_TYPE_WORDS[base]}, got {got}")
    if m is None:
        return value
    if m.choices is not None and value not in m.choices:
        raise OptionError(f.name, f"must be one of {', '.join(map(str, m.choices))}, got {value!r}")
    if base in ("int", "float") and not _in_range(m, value):
        bad = "nan" if isinstance(value, float) and math.isnan(value) else _num(value)
        raise OptionError(f.name, f"must be {range_text(m)}, got {bad}")
    if m.check is not None and (why := m.check(value)):
        raise OptionError(f.name, f"{why}, got {value!r}")
    return value


def check_fields(obj: Any) -> None:
    """Check every option field of a dataclass instance (frozen or not) and store the result."""
    for f in dataclasses.fields(obj):
        if meta(f) is None:
            continue
        old = getattr(obj, f.name)
        new = checked(f, old)
        if new is not old:
            object.__setattr__(obj, f.name, new)


def build(
    cls: type, values: dict[str, Any], name: Callable[[dataclasses.Field], str] = yaml_key
) -> Any:
    """`cls` from values named by `name(field)` (the YAML key by default); a refused value raises
    ConfigError with the name the caller used (`mask_threshold`, `--steps`, ...)."""
    by_name = {name(f): f for f in dataclasses.fields(cls) if meta(f) is not None}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}; known: {sorted(by_name)}")
    try:
        return cls(**{by_name[k].name: v for k, v in values.items()})
    except OptionError as exc:
        f = next(f for f in dataclasses.fields(cls) if f.name == exc.field)
        raise ConfigError(f"{name(f)} {exc.reason}") from None


# -- near misses: "did you mean" (argparse suggests flags only from Python 3.12) ----------------
def near_miss(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` is probably a typo of, if any."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_fields(source: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    """The message for config keys no field has, with the key each near miss probably meant."""
    known, unknown = sorted(known), list(unknown)
    hints = [f"{n!r}: did you mean {m!r}?" for n in unknown if (m := near_miss(n, known))]
    hint = f" ({'; '.join(hints)})" if hints else ""
    return f"{source}: unknown field(s) {unknown}{hint}; known fields: {', '.join(known)}"
