"""How every stage times its rows: one StageClock per stage call fills the stage's timing column
(`_bi_t_prepare`, `_bi_t_model`, `_bi_t_detect`, then the results' prepare_s, model_s, write_s,
detect_s and verify_s), so the stages agree on what a row's seconds are.

A row's seconds are what the stage spent on it alone (`row`) plus its even share of the batch
work it took part in (`share`: a model pass, a detector batch). A row the stage never worked on
keeps `idle`: null (the row did not detect, was not verified) or 0.0 (the model stage's skipped
and error rows, whose model_s has always been 0.0).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pyarrow as pa


class StageClock:
    """The seconds of one stage call, row by row, for the column `column`."""

    def __init__(self, column: str, rows: int, idle: float | None = None):
        self.column = column
        self.seconds: list[float | None] = [idle] * rows

    @contextmanager
    def row(self, i: int) -> Iterator[None]:
        """Time the block as row i's own work (counted even when it raises: a failed row took
        that time too)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(i, time.perf_counter() - t0)

    @contextmanager
    def share(self, rows: Iterable[int]) -> Iterator[None]:
        """Time the block as batch work, split evenly over `rows` (none: nobody's time)."""
        rows = list(rows)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if rows:
                each = (time.perf_counter() - t0) / len(rows)
                for i in rows:
                    self.add(i, each)

    def add(self, i: int, seconds: float) -> None:
        """Count `seconds` more for row i."""
        before = self.seconds[i]
        self.seconds[i] = seconds if before is None else before + seconds

    def array(self) -> pa.Array:
        return pa.array(self.seconds, pa.float64())
