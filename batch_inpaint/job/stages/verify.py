"""Verify (after finish, its own actor pool): run the detector again on each written output and
record how much of what was removed is still there.

A row is verified when it is ok, has `mask_used` (it ran detection and reached the model) and has
queries (its `detect` column, else the job's `detect`). Its `residual_score` is the highest score
among the detections of its queries on the output whose box overlaps the mask; 0.0 when none
does. Every other row keeps residual_score null (skipped rows, error rows, rows with a mask of
their own and no queries).

- The detector is asked for its best detections at threshold 0 (up to max_detections), not at
  detect_threshold: the score is the detector's confidence, comparable across rows, and
  max_residual may be set below the detection threshold.
- A box overlaps the mask when at least one mask pixel lies in the pixels the box touches
  (columns floor(x0)..ceil(x1)-1, rows floor(y0)..ceil(y1)-1). A thing found beside the mask is
  not a residual: the job never touched those pixels.
- With max_residual, a row whose score is above it becomes an error of kind `residual`; its
  output stays where the job wrote it (and `output` keeps naming it) so a person can look at it.
- When the verifier itself fails on a row (its output or mask can't be read, the detector fails
  on it alone) the row becomes an error too (the storage error's kind, or `detect`) with its
  output kept: a row that was asked to be verified and could not be is not passed as verified.
  Error rows of a transient kind are redone by the next run, the others with --retry-errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batch_inpaint.batches import isolate
from batch_inpaint.errors import InpaintError, error_kind
from batch_inpaint.image import codec
from batch_inpaint.job.io.output_folder import output_rel
from batch_inpaint.job.io.shard_writer import OUTPUT_BYTES
from batch_inpaint.job.io.writers import open_writer
from batch_inpaint.job.stages.attempts import counted_table
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.timing import StageClock
from batch_inpaint.job.stages.workitem import replace_columns
from batch_inpaint.vocab import TRANSIENT_KINDS, ErrorKind, Status

SCORE, NOTE, SECONDS = "residual_score", "note", "verify_s"
_COLUMNS = {  # what verify may change, with the types RESULT_SCHEMA gives them
    "status": pa.string(),
    "error_kind": pa.string(),
    "error": pa.string(),
    NOTE: pa.string(),
    SCORE: pa.float64(),
    SECONDS: pa.float64(),
}


@dataclass
class Residual:
    """What verify found on one output: the best overlapping detection (label None: none)."""

    score: float
    label: str | None = None


class VerifyStage:
    """Ray Data actor: holds a MaskProvider, loaded once per actor; `__call__(table)` takes
    FINISHED-shaped tables and returns them verified (see the module's docstring)."""

    def __init__(
        self,
        ctx: JobContext,
        provider_factory: Callable[[JobContext], Any] | None = None,
        queries: Sequence[str] | None = None,
    ):
        self.ctx = ctx
        if provider_factory is not None:
            self.provider = provider_factory(ctx)
        else:  # the detect stage's provider, for the job's queries (detect_stage.load_provider)
            from batch_inpaint.job.stages.detect import load_provider

            self.provider = load_provider(ctx, queries)
        from batch_inpaint.job.stages.detect import stage_attempts

        self.attempts = stage_attempts(ctx, "verify")

    def __call__(self, table: pa.Table) -> pa.Table:
        """Verified rows; a batch whose actor died runs row by row (job/stages/attempts.py)."""
        return counted_table(self.attempts, table, self._verified, "verify")

    def _verified(self, table: pa.Table, given_up: Exception | None = None) -> pa.Table:
        return verify_table(table, self.ctx, self.provider, given_up)


def verify_table(
    table: pa.Table, ctx: JobContext, provider, given_up: Exception | None = None
) -> pa.Table:
    """The rows verified; with `given_up`, each row to verify gets it as its failure instead."""
    cfg = ctx.config
    rows = table.select([c for c in ("id", "status", "output", "mask_used", "detect", "error_kind",
                                     "error", NOTE, SCORE) if c in table.column_names]).to_pylist()  # fmt: skip
    todo: list[int] = []
    queries: list[list[str]] = []
    for i, row in enumerate(rows):
        made = row.get("status") == Status.OK.value and row.get("output")
        qs = _queries(row, cfg.detection.detect) if made and row.get("mask_used") else []
        if qs:
            todo.append(i)
            queries.append(qs)
    found: dict[int, Residual | BaseException] = {}
    pictures: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    clock = StageClock(SECONDS, len(rows))  # rows not verified: null
    with clock.share(todo):  # reading and detecting, per row
        for i in todo:
            try:
                if given_up is not None:
                    raise given_up
                pictures[i] = _read(rows[i], ctx)
            except Exception as exc:  # noqa: BLE001 - one row's failure stays in its row
                found[i] = exc
        ready = [(i, q) for i, q in zip(todo, queries, strict=True) if i in pictures]
        found.update(_detect(provider, [i for i, _ in ready], [q for _, q in ready], pictures))
    columns = {name: [row.get(name) for row in rows] for name in _COLUMNS}
    columns[SECONDS] = clock.seconds
    for i, res in found.items():
        _apply(columns, i, rows[i], res, cfg.detection.max_residual)
    return replace_columns(table, {n: pa.array(v, _COLUMNS[n]) for n, v in columns.items()})


def _queries(row: dict, default) -> list[str]:
    from batch_inpaint.detect.queries import parse_queries, row_queries

    try:
        return row_queries(row, parse_queries(default))
    except InpaintError:  # bad queries failed the row's detection already: nothing to verify
        return []


def _read(row: dict, ctx: JobContext) -> tuple[np.ndarray, np.ndarray]:
    """The row's written output (RGB) and its mask (bool), as the job wrote them."""
    cfg, storage = ctx.config, ctx.storage
    writer = open_writer(cfg, storage)  # job/io/writers.py: where the row's output went
    data = row.get(OUTPUT_BYTES)  # a shard row's image: the driver writes its shard later
    if data is None:
        data = writer.read(output_rel(row["output"]))
    image = codec.decode_image(data, max_pixels=cfg.max_pixels)
    mask_rgb = codec.decode_image(writer.read(row["mask_used"]), max_pixels=cfg.max_pixels)
    mask = mask_rgb[..., 0] >= 128
    if mask.shape != image.shape[:2]:
        raise InpaintError(
            f"mask {row['mask_used']} is {mask.shape[1]}x{mask.shape[0]} but the output is "
            f"{image.shape[1]}x{image.shape[0]}",
            kind=ErrorKind.MASK.value,
        )
    return image, mask


def _detect(provider, idx: list[int], queries: list[list[str]], pictures) -> dict[int, Any]:
    """Residual (or the failure) per row position; a batch the detector fails on is split
    (batches.isolate), so one bad output fails only itself."""

    def run(items: list[tuple[int, list[str]]]) -> list[Residual]:
        dets = provider.detector.detect([pictures[i][0] for i, _ in items], [q for _, q in items],
                                        0.0, max_detections=provider.max_detections)  # fmt: skip
        return [residual(d, pictures[i][1]) for (i, _), d in zip(items, dets, strict=True)]

    items = list(zip(idx, queries, strict=True))
    found = isolate(run, items, lambda _, exc: exc)
    return {i: res for (i, _), res in zip(items, found, strict=True)}


def residual(detections: Sequence, mask: np.ndarray) -> Residual:
    """The best detection whose box touches a mask pixel; score 0.0 when none does."""
    h, w = mask.shape
    best = Residual(0.0)
    for d in detections:
        x0, y0, x1, y1 = d.box
        c0, r0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
        c1, r1 = min(int(math.ceil(x1)), w), min(int(math.ceil(y1)), h)
        if c1 > c0 and r1 > r0 and d.score > best.score and mask[r0:r1, c0:c1].any():
            best = Residual(float(d.score), d.label)
    return best


def _apply(columns: dict[str, list], i: int, row: dict, res, limit: float | None) -> None:
    rid, out = row["id"], output_rel(row["output"])
    if isinstance(res, Residual):
        columns[SCORE][i] = res.score
        found = f"{res.label!r} at {res.score:.3f}" if res.label else "nothing"
        _add_note(columns, i, f"verify: {found} inside the mask")
        if limit is None or res.score <= limit:
            return
        columns["status"][i] = Status.ERROR.value
        columns["error_kind"][i] = ErrorKind.RESIDUAL.value
        columns["error"][i] = (
            f"row {rid!r}: verify found {res.label!r} at {res.score:.3f} inside the mask, above "
            f"max_residual {limit:g}; the output is kept at {out} for review. Rerun with "
            "--retry-errors after changing what made it (e.g. a larger --detect-dilate, another "
            "model) or with a higher --max-residual"
        )
        return
    kind = error_kind(res)
    if kind not in TRANSIENT_KINDS and not _storage_kind(kind):
        kind = ErrorKind.DETECT.value
    msg = str(res) if isinstance(res, InpaintError) else f"{type(res).__name__}: {res}"
    columns["status"][i] = Status.ERROR.value
    columns["error_kind"][i] = kind
    columns["error"][i] = (
        f"row {rid!r}: verify could not check its output ({msg}); the output is kept at {out}. "
        + (
            "The next run verifies it again"
            if kind in TRANSIENT_KINDS
            else "Rerun with --retry-errors to make and verify it again"
        )  # fmt: skip
    )


def _storage_kind(kind: str) -> bool:
    """Kinds that say why the output or mask could not be read: kept as they are."""
    return kind in {k.value for k in (ErrorKind.NOT_FOUND, ErrorKind.ACCESS_DENIED,
                                      ErrorKind.DECODE, ErrorKind.STORAGE, ErrorKind.MASK)}  # fmt: skip


def _add_note(columns: dict[str, list], i: int, text: str) -> None:
    note = columns[NOTE][i]
    columns[NOTE][i] = f"{note}; {text}" if note else text
