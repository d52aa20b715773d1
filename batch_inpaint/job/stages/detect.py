"""The detect stage (an actor pool, GPU when there is one), only in jobs with queries: each row
with queries (its `detect` column, else the job's `detect`) gets its image read and decoded, the
mask provider run on it in batches, and the DETECTED columns (job/stages/workitem.py): what was found,
the detected mask as PNG bytes, a note. Rows without queries pass through with nulls. A row whose
image can't be read, or on which the detector fails (alone, after splitting its batch), becomes
an error row that the later stages pass through untouched.

Prepare (job/stages/prepare.py) then unites the detected mask with the row's own (`row_mask`) and saves
the mask the job used under {output}/masks/ (`save_mask`); docs/masks.md has the rules."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from batch_inpaint.batches import isolate
from batch_inpaint.detect.provider import DetectResult, MaskProvider
from batch_inpaint.detect.queries import DONE_COLUMN, QUERY_COLUMN, queries_of
from batch_inpaint.errors import ConfigError, InpaintError
from batch_inpaint.image import codec
from batch_inpaint.image.mask_png import decode_mask, encode_mask
from batch_inpaint.job.io.writers import open_writer
from batch_inpaint.job.stages.attempts import Attempts, counted_table
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.timing import StageClock
from batch_inpaint.job.stages.workitem import (
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
from batch_inpaint.storage.uri import redact_uri, resolve
from batch_inpaint.vocab import ErrorKind, Status

ProviderFactory = Callable[[JobContext], MaskProvider]  # picklable: Ray ships it to each actor


def job_queries(storage, cfg) -> list[str]:
    """Every query the job will detect: the config's and the manifest rows' (`detect` column),
    read on the driver; [] for a job without detection. Only the column's distinct values are
    parsed (a 10 M-row manifest has few). A value that does not parse is left to its row (the
    detect stage makes it an error row); when no value parses and some don't, nothing would
    detect: ConfigError naming the first bad row, before any cluster work."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from batch_inpaint.manifest.shard_listing import is_pattern

    if is_pattern(cfg.manifest) or cfg.manifest.endswith((".tar", ".shards.json")):
        return list(cfg.detection.detect)  # shards by name: a row's `detect` still adds its own
    fs, path = storage.pyarrow_filesystem(cfg.manifest)
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
    except (pa.ArrowInvalid, OSError):  # a folder of tars (the scan has read the source)
        return list(cfg.detection.detect)
    names = [c for c in (QUERY_COLUMN, DONE_COLUMN) if c in dataset.schema.names]
    if not names:
        return list(cfg.detection.detect)
    if not cfg.detection.detect and QUERY_COLUMN not in names:
        return []
    found: list[str] = []
    bad: tuple[pa.Table, Exception] | None = None  # the first batch with a bad value
    for batch in dataset.to_batches(columns=["id", *names]):
        table = pa.Table.from_batches([batch])
        if DONE_COLUMN in names:  # rows `batch-inpaint detect` already did
            table = table.filter(pc.is_null(table.column(DONE_COLUMN)))
        if QUERY_COLUMN not in names:
            values = [None] if table.num_rows else []
        else:
            column = table.column(QUERY_COLUMN)
            try:
                values = pc.unique(column).to_pylist()
            except pa.ArrowNotImplementedError:  # lists (and odder types): distinct by repr
                values = list({repr(v): v for v in column.to_pylist()}.values())
        for value in values:
            try:
                qs = queries_of({QUERY_COLUMN: value}, cfg.detection.detect)
            except ConfigError as exc:
                bad = bad or (table, exc)
                continue
            found += [q for q in qs if q not in found]
    if bad is not None and not found:
        table, exc = bad
        rid = next(
            (r.get("id") for r in table.to_pylist() if _bad_row(r, cfg.detection.detect)), None
        )
        raise ConfigError(f"row {rid!r}: {exc}; no other row has queries to detect: fix the "
                          f"'{QUERY_COLUMN}' column")  # fmt: skip
    return found


def _bad_row(row: Mapping, default: Sequence[str]) -> bool:
    try:
        queries_of(row, default)
    except ConfigError:
        return True
    return False


def load_provider(ctx: JobContext, queries: Sequence[str] | None = None) -> MaskProvider:
    """The mask provider the config names, loaded like the inpainting models (Hub id, folder or
    s3:// prefix, pinned revision, safetensors, the job's storage options). `queries`: those the
    job will ask (a detector none of them needs is not loaded); None: the config's `detect`."""
    cfg = ctx.config
    wanted = list(queries) if queries is not None else list(cfg.detection.detect)
    return MaskProvider.load(
        detector=cfg.detection.detector, detector_revision=cfg.detection.detector_revision,
        text_detector=cfg.detection.text_detector, text_detector_revision=cfg.detection.text_detector_revision,
        text_threshold=cfg.detection.text_threshold, text_min_confidence=cfg.detection.text_min_confidence,
        segmenter=cfg.detection.segmenter, segmenter_revision=cfg.detection.segmenter_revision,
        queries=wanted or None,
        device=cfg.device, dtype=None if cfg.dtype == "auto" else cfg.dtype,
        storage=ctx.storage, threshold=cfg.detection.detect_threshold,
        max_detections=cfg.detection.max_detections, dilate=cfg.detection.detect_dilate,
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
        """Detected rows; a batch whose actor died runs row by row (job/stages/attempts.py)."""
        return counted_table(self.attempts, table, self._detected, "detect")

    def _detected(self, table: pa.Table, given_up: Exception | None = None) -> pa.Table:
        cfg = self.ctx.config
        names = [c for c in ("id", "image", QUERY_COLUMN, DONE_COLUMN) if c in table.column_names]
        rows = table.select(names).to_pylist()
        n = len(rows)
        out: dict[str, list] = {f.name: [None] * n for f in DETECTED.schema}
        out[STATUS] = [Status.PENDING.value] * n
        todo: list[tuple[int, np.ndarray, list[str]]] = []
        clock = StageClock(T_DETECT, n)  # rows that do not detect: null
        for i, row in enumerate(rows):
            try:
                qs = queries_of(row, cfg.detection.detect)
                if qs and row.get("id") and row.get("image"):  # else prepare says what's wrong
                    with clock.row(i):  # a read that fails took its time too
                        if given_up is not None:
                            raise given_up
                        todo.append((i, self._read(row), qs))
            except Exception as exc:  # noqa: BLE001 - a bad row becomes data, never a crash
                self._fail(out, i, row.get("id"), exc)
        step = cfg.detection.detect_batch_size
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            with clock.share(i for i, _, _ in chunk):
                found = self._detect(chunk, rows, out)
            for (i, _, qs), res in found:
                out[DETECTIONS][i] = [d.to_dict() for d in res.detections]
                if res.found:
                    out[DETECT_MASK][i] = encode_mask(res.mask)
                else:
                    out[NOTE][i] = self._nothing_found(qs)
        out[T_DETECT] = clock.seconds
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
        """Results of a batch, split on failure (batches.isolate): one bad image fails alone."""

        def run(items: list[tuple]) -> list[DetectResult]:
            return self.provider.masks([c[1] for c in items], [c[2] for c in items])

        found = []
        for c, res in zip(chunk, isolate(run, chunk, _detector_failed), strict=True):
            if isinstance(res, Exception):
                self._fail(out, c[0], rows[c[0]].get("id"), res)
            else:
                found.append((c, res))
        return found

    @staticmethod
    def _fail(out: dict, i: int, rid, exc: BaseException) -> None:
        out[STATUS][i] = Status.ERROR.value
        out[ERROR_KIND][i], out[ERROR][i] = row_error(rid, exc)

    def _nothing_found(self, queries: Sequence[str]) -> str:
        t = self.provider.threshold
        shown = "each detector's default" if t is None else f"{t:g}"
        return f"nothing found for {', '.join(queries)} (threshold {shown})"


def _detector_failed(_: tuple, exc: Exception) -> InpaintError:
    msg = exc if isinstance(exc, InpaintError) else f"{type(exc).__name__}: {exc}"
    return InpaintError(f"the detector failed: {msg}", kind=ErrorKind.DETECT.value)


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


def save_mask(ctx: JobContext, row_id: str, changed: np.ndarray) -> str:
    """Write the mask of the pixels the job may change under {output}/masks/; its relative path."""
    cfg = ctx.config
    return open_writer(cfg, ctx.storage).write_mask(row_id, encode_mask(changed))
