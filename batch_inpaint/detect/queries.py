"""Queries, parsed in one place: what to detect in a row (its `detect` column, else the job's
queries), for `batch-inpaint detect`, the job's detect and verify stages and manifest checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError
from batch_inpaint.vocab import ErrorKind

QUERY_COLUMN = "detect"  # per-row queries: 'a, b' or a list; replaces the job's for that row
DONE_COLUMN = "detections"  # set by `batch-inpaint detect`: the job does not detect the row again


def parse_queries(value: Any, what: str = "queries") -> list[str]:
    """['watermark', 'text'] from 'watermark, text' or a list; stripped, lowercased, deduplicated
    in order. ConfigError for anything else."""
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = value
    else:
        raise ConfigError(f"{what} must be a comma-separated string or a list, got {value!r}")
    out: list[str] = []
    for q in items:
        if not isinstance(q, str):
            raise ConfigError(f"{what}: {q!r} is not a string")
        q = " ".join(q.replace(".", " ").split()).lower()  # '.' separates phrases in the models
        if q and q not in out:
            out.append(q)
    return out


def row_queries(row: Mapping[str, Any], default: Sequence[str], *, named: bool = True) -> list[str]:
    """The row's queries: its `detect` value, else (null, or a value with no query in it: '',
    ' , ', [], ['']) the job's `default`. A value that is not a string or list of strings is a
    ConfigError of kind bad_value, naming the row unless `named` is False (the caller does)."""
    value = row.get(QUERY_COLUMN)
    if isinstance(value, list | tuple | np.ndarray):  # ['a', 'b,c'] as the job's detect reads it
        value = [p for q in value for p in (q.split(",") if isinstance(q, str) else [q])]
    try:
        return parse_queries(value, f"column '{QUERY_COLUMN}'") or list(default)
    except ConfigError as exc:
        why = f"row {row.get('id')!r}: {exc}" if named else str(exc)
        raise ConfigError(why, kind=ErrorKind.BAD_VALUE.value) from None


def queries_of(row: Mapping[str, Any], default: Sequence[str]) -> list[str]:
    """What the job detects in this row: row_queries, and [] for a row that already carries
    detections (a manifest `batch-inpaint detect` wrote): its mask is given. A bad value raises
    ConfigError of kind bad_value; the detect stage makes it the row's error."""
    qs = row_queries(row, default, named=False)
    return [] if row.get(DONE_COLUMN) is not None else qs
