"""The work item: what one manifest row carries between the job's stages, as typed Arrow columns.

Every stage takes the manifest's own table and adds or replaces `_bi_` columns (every other column
travels untouched to the result row). The columns are declared here once, with Arrow types:
regions are a list of structs, the generation parameters a struct, never JSON in strings. Each
stage checks its output against its declared schema (`Declared.check`: names, types and status
values, no data copied), so a stage that drifts fails at once, not two stages later.

    manifest row -> prepare: PREPARED -> model: MODELLED -> finish: RESULT_SCHEMA columns
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.detect.base import detections_arrow_type
from batch_inpaint.errors import InpaintError, error_kind
from batch_inpaint.image.geometry import Region
from batch_inpaint.job.stages.timing import StageClock
from batch_inpaint.manifest.schema import RESULT_SCHEMA
from batch_inpaint.params import GenerationParams
from batch_inpaint.vocab import FINAL, ErrorKind, Status

P = "_bi_"  # prefix of internal columns; dropped before results are written
STATUS, ERROR_KIND, ERROR = f"{P}status", f"{P}error_kind", f"{P}error"
WIDTH, HEIGHT, PIXELS, SOFT = f"{P}width", f"{P}height", f"{P}pixels", f"{P}soft"
REGIONS, CROPS, CROP_MASKS = f"{P}regions", f"{P}crops", f"{P}crop_masks"
SEED, PARAMS, EXIF = f"{P}seed", f"{P}params", f"{P}exif"
RESULTS, T_PREPARE, T_MODEL = f"{P}results", f"{P}t_prepare", f"{P}t_model"

REGION_TYPE = pa.struct(
    [pa.field(n, pa.int32(), nullable=False) for n in ("x0", "y0", "x1", "y1", "work_w", "work_h")]
)
_SCALARS = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def _params_type() -> pa.StructType:
    """GenerationParams as a struct, field for field, so a new parameter needs no edit here."""
    out = []
    for f in dataclasses.fields(GenerationParams):
        base = str(f.type).replace(" | None", "").replace("None | ", "").strip()
        if base not in _SCALARS:
            raise TypeError(f"GenerationParams.{f.name}: no Arrow type for {f.type!r}")
        out.append(pa.field(f.name, _SCALARS[base]))
    return pa.struct(out)


PARAMS_TYPE = _params_type()
_BLOBS = pa.list_(pa.large_binary())


@dataclass(frozen=True)
class Declared:
    """The `_bi_` columns a stage hands on, and the statuses its rows may have."""

    stage: str
    schema: pa.Schema
    statuses: frozenset[str]
    status_column: str = STATUS

    def check(self, table: pa.Table) -> pa.Table:
        """The table itself when it carries every declared column with its type; else an
        internal error naming the stage and the column (a bug, never a bad row)."""
        for f in self.schema:
            if f.name not in table.column_names:
                raise InpaintError(
                    f"{self.stage} stage: column {f.name!r} is missing from its table",
                    kind=ErrorKind.INTERNAL.value,
                )
            got = table.schema.field(f.name).type
            if not got.equals(f.type):
                raise InpaintError(
                    f"{self.stage} stage: column {f.name!r} is {got}, declared {f.type}",
                    kind=ErrorKind.INTERNAL.value,
                )
        seen = set(pc.unique(table.column(self.status_column)).to_pylist())
        if not seen <= self.statuses:
            raise InpaintError(
                f"{self.stage} stage: statuses {sorted(seen - self.statuses, key=str)} are not "
                f"among {sorted(self.statuses)}",
                kind=ErrorKind.INTERNAL.value,
            )
        return table


_IN_FLIGHT = frozenset(s.value for s in (Status.PENDING, Status.SKIPPED, Status.ERROR))
_PREPARED_FIELDS = [
    (STATUS, pa.string()),
    (ERROR_KIND, pa.string()),
    (ERROR, pa.string()),
    (WIDTH, pa.int32()),
    (HEIGHT, pa.int32()),
    (PIXELS, pa.large_binary()),  # RGB uint8, height x width x 3
    # per region: paste weights, uint8 0..255 over its box only (no weight lies outside the
    # boxes): a small mask on a large photo moves kilobytes, not a full-frame plane
    (SOFT, _BLOBS),
    (REGIONS, pa.list_(REGION_TYPE)),
    (CROPS, _BLOBS),  # per region: RGB uint8 at its work size
    (CROP_MASKS, _BLOBS),  # per region: uint8 0/255 at its work size
    (SEED, pa.int64()),
    (PARAMS, PARAMS_TYPE),
    (EXIF, pa.binary()),
    (T_PREPARE, pa.float64()),
    (f"{P}note", pa.string()),  # NOTE: why a row is skipped, a suspicious mask (mask_concerns)
]
PREPARED = Declared("prepare", pa.schema(_PREPARED_FIELDS), _IN_FLIGHT)
# What the model stage reads; it writes MODELLED: crops gone, results (per region, RGB uint8 at
# the region's work size) and its time share added, failed rows turned to error rows.
MODEL_INPUT = Declared(
    "model (input)",
    pa.schema(
        [f for f in PREPARED.schema if f.name in (STATUS, REGIONS, CROPS, CROP_MASKS, SEED, PARAMS)]
    ),
    _IN_FLIGHT,
)
MODELLED = Declared(
    "model",
    pa.schema(
        [f for f in PREPARED.schema if f.name not in (CROPS, CROP_MASKS)]
        + [pa.field(RESULTS, _BLOBS), pa.field(T_MODEL, pa.float64())]
    ),
    _IN_FLIGHT,
)
# Detection (job/stages/detect.py), only in jobs with queries: the detect stage adds these with
# the status columns (error rows: unreadable image, detector failure; prepare keeps them); prepare
# reads the detected mask and sets the note and the mask it saved; finish copies them out.
DETECTIONS, DETECT_MASK, NOTE = f"{P}detections", f"{P}detect_mask", f"{P}note"
T_DETECT = f"{P}t_detect"
MASK_USED = f"{P}mask_used"
DETECTED = Declared(
    "detect",
    pa.schema(
        [
            (STATUS, pa.string()),
            (ERROR_KIND, pa.string()),
            (ERROR, pa.string()),
            (DETECTIONS, detections_arrow_type()),  # null: the row has no queries
            (DETECT_MASK, pa.large_binary()),  # PNG of the detected mask; null: nothing found
            (NOTE, pa.string()),
            (T_DETECT, pa.float64()),  # fetch, decode and the row's share of its batch
        ]
    ),
    frozenset(s.value for s in (Status.PENDING, Status.ERROR)),
)
FINISHED = Declared(
    "finish", pa.schema([f for f in RESULT_SCHEMA if f.name != "id"]), frozenset(FINAL), "status"
)


@dataclass
class WorkItem:
    """One row's work item as the prepare stage builds it (a row of PREPARED)."""

    status: Status
    error_kind: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    pixels: bytes | None = None
    soft: list[bytes] | None = None
    regions: list[Region] | None = None
    crops: list[bytes] | None = None
    crop_masks: list[bytes] | None = None
    seed: int | None = None
    params: GenerationParams | None = None
    exif: bytes | None = None
    note: str | None = None  # its seconds: the prepare stage's clock (T_PREPARE)

    @classmethod
    def failed(cls, row_id, exc: BaseException) -> WorkItem:
        kind, message = row_error(row_id, exc)
        return cls(status=Status.ERROR, error_kind=kind, error=message)

    def values(self) -> dict:
        """The item as PREPARED column values (map_rows' row), by column name."""
        out = {col: getattr(self, name) for name, col in _ITEM_COLUMNS.items()}
        out[STATUS] = Status(self.status).value
        if self.regions is not None:
            out[REGIONS] = [region_value(r) for r in self.regions]
        if self.params is not None:
            out[PARAMS] = self.params.to_dict()
        return out


_ITEM_COLUMNS = {f.name: f"{P}{f.name}" for f in dataclasses.fields(WorkItem)}  # field -> column


def row_error(row_id, exc: BaseException) -> tuple[str, str]:
    """(error_kind, message) of a row that failed: the message names the row and the cause."""
    msg = str(exc) if isinstance(exc, InpaintError) else f"{type(exc).__name__}: {exc}"
    return error_kind(exc), f"row {row_id!r}: {msg}"


def region_value(r: Region) -> dict:
    x0, y0, x1, y1 = r.box
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "work_w": r.work_size[0],
            "work_h": r.work_size[1]}  # fmt: skip


def region_from(v: dict) -> Region:
    return Region(box=(v["x0"], v["y0"], v["x1"], v["y1"]), work_size=(v["work_w"], v["work_h"]))


def pixels_from(buf: bytes, h: int, w: int, c: int | None = None) -> np.ndarray:
    """A uint8 view of bytes a stage wrote with ndarray.tobytes(): (h, w) or (h, w, c)."""
    shape = (h, w) if c is None else (h, w, c)
    return np.frombuffer(buf, dtype=np.uint8).reshape(shape)


def params_from(v: dict) -> GenerationParams:
    return GenerationParams(**v)


def replace_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Set each column: replaced in place when the table has it, else appended."""
    for name, arr in columns.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, arr) if i >= 0 else table.append_column(name, arr)
    return table


def map_rows(
    table: pa.Table,
    fn: Callable[[int, dict], Mapping],
    schema: pa.Schema,
    reads: Iterable[str] | None = None,
    clock: StageClock | None = None,
) -> dict[str, pa.Array]:
    """The pivot of a row-by-row stage: fn(i, row) for each row position i, `row` a dict of the
    table's `reads` columns (those it has; None: all), and the mapping fn returns becomes the
    row's value in each column of `schema` (a name it leaves out: null). Returns those columns,
    typed by `schema`, for replace_columns. `clock`: each call is timed as its row's own work and
    the clock's column, when `schema` has it, is filled from the clock."""
    have = table.column_names
    names = have if reads is None else [c for c in dict.fromkeys(reads) if c in have]
    data = table.select(names).to_pydict()  # one conversion a column, not one a cell
    rows = (dict(zip(names, v, strict=True)) for v in zip(*data.values(), strict=True))
    if not names:  # nothing read: still one call a row
        rows = ({} for _ in range(table.num_rows))
    outs = []
    for i, row in enumerate(rows):
        if clock is None:
            outs.append(fn(i, row))
        else:  # StageClock.row, inline: this loop is the CPU path's per-row cost
            t0 = time.perf_counter()
            outs.append(fn(i, row))
            clock.add(i, time.perf_counter() - t0)
    values = {name: [out.get(name) for out in outs] for name in schema.names}
    if clock is not None and clock.column in values:
        values[clock.column] = clock.seconds
    return {f.name: pa.array(values[f.name], f.type) for f in schema}


@dataclass
class ModelOutcome:
    """What the model stage made of its pending rows, by row position: per region result bytes,
    or the error that failed the row."""

    results: dict[int, list[bytes]] = field(default_factory=dict)
    failures: dict[int, BaseException] = field(default_factory=dict)
