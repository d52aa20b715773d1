"""Run a batch, split it on failure: the one rule the model, detect and verify stages and the
`detect` command share, so one bad image (or one too large for the GPU) costs only itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def isolate(
    fn: Callable[[list[T]], Sequence[R]],
    items: Sequence[T],
    failed: Callable[[T, Exception], R],
    *,
    on_split: Callable[[Exception], None] | None = None,
) -> list[R]:
    """fn(items), one result per item, in order. When it raises (or gives a result count that
    is not one per item), the batch is split in halves and each half run again, down to single
    items; an item that fails alone gets failed(item, exc). on_split(exc) runs before each split
    (the model frees its GPU cache there). Only Exception is caught, never KeyboardInterrupt."""
    items = list(items)
    if not items:
        return []
    try:
        out = list(fn(items))
        if len(out) != len(items):
            raise ValueError(f"{len(out)} results for {len(items)} inputs")
        return out
    except Exception as exc:  # noqa: BLE001 - isolated to the item that causes it
        if len(items) == 1:
            return [failed(items[0], exc)]
        if on_split is not None:
            on_split(exc)
        h = len(items) // 2
        return isolate(fn, items[:h], failed, on_split=on_split) + isolate(
            fn, items[h:], failed, on_split=on_split
        )
