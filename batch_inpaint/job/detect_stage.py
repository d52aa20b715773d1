"""The detect stage (an actor pool, GPU when there is one), only in jobs with queries: each row
with queries (its `detect` column, else the job's `detect`) gets its image read and decoded, the
mask provider run on it in batches, and the DETECTED columns (job/workitem.py): what was found,
the detected mask as PNG bytes, a note. Rows without queries pass through with nulls. A row whose
image can't be read, or on which the detector fails (alone, after splitting its batch), becomes
an error row that the later stages pass through untouched.

Prepare (job/prepare.py) then unites the detected mask with the row's own (`row_mask`) and saves
the mask the job used under {output}/masks/ (`save_mask`); docs/masks.md has the rules."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from batch_inpaint.detect.provider import DetectResult, MaskProvider
from batch_inpaint.errors import ConfigError, InpaintError
from batch_inpaint.image import codec
from batch_inpaint.job.attempts import Attempts, counted_table
from batch_inpaint.job.context import JobContext
from batch_inpaint.job.workitem import (
    DETECT_MASK,
    DETECTED,
    DETECTIONS,
    ERROR,
    ERROR_KIND,
    NOTE,
    STATUS,
    T_DETECT,
    replace_columns,
    row_error,
)
from batch_inpaint.storage.uri import join, output_key, redact_uri, resolve
from batch_inpaint.vocab import ErrorKind, Status

QUERY_COLUMN = "detect"  # as detect/rows.py: a row's own queries replace the job's
DONE_COLUMN = "detections"  # set by `batch-inpaint detect`: the row is not detected again
MASKS_DIR = "masks"
ProviderFactory = Callable[[JobContext], MaskProvider]  # picklable: Ray ships it to each actor


def queries_of(row: Mapping, default: Sequence[str]) -> list[str]:
    """What to detect in this row: its `detect` column, else the job's. None for a row that
    already carries detections (a manifest `batch-inpaint detect` wrote): its mask is given."""
    from batch_inpaint.detect.rows import row_queries  # imported late: it imports job.prepare

    qs = row_queries(row, default)
    return [] if row.get(DONE_COLUMN) is not None else qs


def job_queries(storage, cfg) -> list[str]:
    """Every query the job will detect: the config's and the manifest rows' (`detect` column),
    read on the driver; [] for a job without detection. A bad row value is a ConfigError naming
    the row, so the run stops before any cluster work. Only the column's distinct values are
    parsed (a 10 M-row manifest has few); the rows are walked only to name a bad one."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_filesystem(cfg.manifest)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    names = [c for c in (QUERY_COLUMN, DONE_COLUMN) if c in dataset.schema.names]
    if not names:
        return list(cfg.detect)
    if not cfg.detect and QUERY_COLUMN not in names:
        return []
    found: list[str] = []
    for batch in dataset.to_batches(columns=["id", *names]):
        table = pa.Table.from_batches([batch])
        if DONE_COLUMN in names:  # rows `batch-inpaint detect` already did
            table = table.filter(pc.is_null(table.column(DONE_COLUMN)))
        if QUERY_COLUMN not in names:
            values = [None] if table.num_rows else []
        else:
            column = table.column(QUERY_COLUMN)
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                values = {None if v is None else tuple(v) for v in column.to_pylist()}
            else:
                values = pc.unique(column).to_pylist()
        try:
            for value in values:
                value = list(value) if isinstance(value, tuple) else value
                for q in queries_of({QUERY_COLUMN: value}, cfg.detect):
                    if q not in found:
                        found.append(q)
        except ConfigError:  # name the row: walk this batch's rows
            for row in table.to_pylist():
                queries_of(row, cfg.detect)
            raise
    return found


def load_provider(ctx: JobContext, queries: Sequence[str] | None = None) -> MaskProvider:
    """The mask provider the config names, loaded like the inpainting models (Hub id, folder or
    s3:// prefix, pinned revision, safetensors, the job's storage options). `queries`: those the
    job will ask (a detector none of them needs is not loaded); None: the config's `detect`."""
    cfg = ctx.config
    wanted = list(queries) if queries is not None else list(cfg.detect)
    return MaskProvider.load(
        detector=cfg.detector, detector_revision=cfg.detector_revision,
        text_detector=cfg.text_detector, text_detector_revision=cfg.text_detector_revision,
        text_threshold=cfg.text_threshold, segmenter=cfg.segmenter,
        segmenter_revision=cfg.segmenter_revision, queries=wanted or None,
        device=cfg.device, dtype=None if cfg.dtype == "auto" else cfg.dtype,
        storage=ctx.storage, threshold=cfg.detect_threshold,
        max_detections=cfg.max_detections, dilate=cfg.detect_dilate,
    )  # fmt: skip


class DetectStage:
    """One provider per actor. `provider_factory(ctx)` replaces the configured detectors (tests
    give a BoxesDetector for known boxes); `queries` are the job's (see load_provider)."""

    def __init__(
        self,
        ctx: JobContext,
        provider_factory: ProviderFactory | None = None,
        queries: Sequence[str] | None = None,
    ):
        self.ctx = ctx
        if provider_factory is not None:
            self.provider = provider_factory(ctx)
        else:
            self.provider = load_provider(ctx, queries)
        self.attempts = stage_attempts(ctx, "detect")

    def __call__(self, table: pa.Table) -> pa.Table:
        """Detected rows; a batch whose actor died runs row by row (job/attempts.py)."""
        return counted_table(self.attempts, table, self._detected, "detect")

    def _detected(self, table: pa.Table, given_up: Exception | None = None) -> pa.Table:
        cfg = self.ctx.config
        names = [c for c in ("id", "image", QUERY_COLUMN, DONE_COLUMN) if c in table.column_names]
        rows = table.select(names).to_pylist()
        n = len(rows)
        out: dict[str, list] = {f.name: [None] * n for f in DETECTED.schema}
        out[STATUS] = [Status.PENDING.value] * n
        todo: list[tuple[int, np.ndarray, list[str]]] = []
        for i, row in enumerate(rows):
            t0 = time.perf_counter()
            try:
                qs = queries_of(row, cfg.detect)
                if qs and row.get("id") and row.get("image"):  # else prepare says what's wrong
                    if given_up is not None:
                        raise given_up
                    todo.append((i, self._read(row), qs))
            except Exception as exc:  # noqa: BLE001 - a bad row becomes data, never a crash
                self._fail(out, i, row.get("id"), exc)
            if out[STATUS][i] == Status.ERROR.value or (todo and todo[-1][0] == i):
                out[T_DETECT][i] = time.perf_counter() - t0
        step = cfg.detect_batch_size
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            t0 = time.perf_counter()
            found = self._detect(chunk, rows, out)
            share = (time.perf_counter() - t0) / len(chunk)
            for i, _, _ in chunk:
                out[T_DETECT][i] += share
            for (i, _, qs), res in found:
                out[DETECTIONS][i] = [d.to_dict() for d in res.detections]
                if res.found:
                    out[DETECT_MASK][i] = encode_mask(res.mask)
                else:
                    out[NOTE][i] = self._nothing_found(qs)
        cols = {f.name: pa.array(out[f.name], f.type) for f in DETECTED.schema}
        return DETECTED.check(replace_columns(table, cols))

    def _read(self, row: Mapping) -> np.ndarray:
        uri = resolve(str(row["image"]), self.ctx.manifest_base)
        data = self.ctx.storage.read_bytes(uri)
        try:
            rgb, _ = codec.decode_image_with_alpha(data, max_pixels=self.ctx.config.max_pixels)
        except InpaintError as exc:
            raise type(exc)(f"image {redact_uri(uri)}: {exc}", kind=exc.kind) from None
        return rgb

    def _detect(self, chunk, rows, out) -> list[tuple[tuple, DetectResult]]:
        """Results of a batch; when it fails, each row alone, so one bad image fails alone."""
        try:
            found = self.provider.masks([c[1] for c in chunk], [c[2] for c in chunk])
            return list(zip(chunk, found, strict=True))
        except Exception as exc:  # noqa: BLE001
            if len(chunk) == 1:
                i = chunk[0][0]
                msg = exc if isinstance(exc, InpaintError) else f"{type(exc).__name__}: {exc}"
                why = InpaintError(f"the detector failed: {msg}", kind=ErrorKind.DETECT.value)
                self._fail(out, i, rows[i].get("id"), why)
                return []
            return [pair for c in chunk for pair in self._detect([c], rows, out)]

    @staticmethod
    def _fail(out: dict, i: int, rid, exc: BaseException) -> None:
        out[STATUS][i] = Status.ERROR.value
        out[ERROR_KIND][i], out[ERROR][i] = row_error(rid, exc)

    def _nothing_found(self, queries: Sequence[str]) -> str:
        t = self.provider.threshold
        shown = "each detector's default" if t is None else f"{t:g}"
        return f"nothing found for {', '.join(queries)} (threshold {shown})"


# -- what prepare does with a detected row ---------------------------------------------------
def stage_attempts(ctx: JobContext, stage: str) -> Attempts | None:
    out = ctx.config.output
    return Attempts(ctx.storage, out, stage) if out and ctx.storage else None


def ran(row: Mapping) -> bool:
    """Whether detection ran on this row (it has queries and was read)."""
    return row.get(DETECTIONS) is not None


def row_mask(row: Mapping, size: tuple[int, int], given: np.ndarray | None) -> np.ndarray | None:
    """The union of the row's own mask (`given`, None when it has none) and the detected one; an
    empty mask when detection found nothing and the row has none (prepare then skips it)."""
    data = row.get(DETECT_MASK)
    if data is None:
        if given is None and ran(row):
            return np.zeros((size[1], size[0]), bool)
        return given
    found = decode_mask(data)
    if found.shape != (size[1], size[0]):
        raise InpaintError(f"detected mask is {found.shape[::-1]}, image {size}",
                           kind=ErrorKind.INTERNAL.value)  # fmt: skip
    return found if given is None else (found | given)


def row_note(row: Mapping, given: np.ndarray | None) -> str | None:
    note = row.get(NOTE)
    if note and given is not None and row.get(DETECT_MASK) is None:
        return f"{note}; the row's own mask was used"
    return note


def mask_rel(row_id: str) -> str:
    return f"{MASKS_DIR}/" + output_key(str(row_id), ".png")


def save_mask(ctx: JobContext, row_id: str, changed: np.ndarray) -> str:
    """Write the mask of the pixels the job may change under {output}/masks/; its relative path."""
    cfg = ctx.config
    rel = mask_rel(row_id)
    ctx.storage.write_bytes(join(cfg.output, rel), encode_mask(changed), root=cfg.output)
    return rel


def encode_mask(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask).astype(bool).astype(np.uint8) * 255, "L").save(
        buf, "PNG", compress_level=6
    )
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L")) > 127


def check_detection(cfg, queries: Sequence[str]) -> None:
    """Settings that can't work, found before any cluster work (ConfigError: exit 2)."""
    from batch_inpaint.detect.provider import NONE

    if cfg.max_residual is not None and not cfg.verify:
        raise ConfigError("config field 'max_residual': needs verify (--verify / verify: true), "
                          "or unset max_residual")  # fmt: skip
    if not queries:
        if cfg.verify:
            raise ConfigError("config field 'verify': nothing to verify: give detect "
                              "(--detect 'watermark') or a 'detect' column in the manifest")  # fmt: skip
        return
    off = [n for n in ("detector", "text_detector")
           if str(getattr(cfg, n) or "").strip().lower() in NONE and getattr(cfg, n) is not None]  # fmt: skip
    if len(off) == 2:
        raise ConfigError("config fields 'detector' and 'text_detector' are both 'none': "
                          f"nothing can detect {', '.join(queries)}; give one of them")  # fmt: skip
    for name in ("detector", "text_detector", "segmenter"):
        check_local_folder(cfg, name)


def check_local_folder(cfg, name: str) -> None:
    """A local model folder that is not on this machine, when the actors run here too."""
    import os
    from pathlib import Path

    value = getattr(cfg, name) or ""
    looks_local = value.startswith(("/", "./", "../", "~", "file://"))
    here = not cfg.address and not os.environ.get("RAY_ADDRESS") or cfg.address == "local"
    if looks_local and here:
        path = Path(os.path.expanduser(value.removeprefix("file://")))
        if not path.is_dir():
            raise ConfigError(
                f"config field '{name}': {value} is not a folder on this machine (where the "
                "detect actors would load it); check the path, or build a test one with "
                "`batch-inpaint make-tiny-model --kind detector DIR`"
            )
