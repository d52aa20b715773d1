"""Stage 1 (CPU tasks): fetch the row's bytes, decode, build the mask, plan the regions, cut them.

A row that fails becomes an error work item and travels on, so it still reaches the metadata.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from batch_inpaint.errors import InpaintError, MaskError
from batch_inpaint.image import codec, masks
from batch_inpaint.image.inpaint import prepare
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.model import check_memory
from batch_inpaint.job.stages.timing import StageClock
from batch_inpaint.job.stages.workitem import (
    DETECT_MASK,
    ERROR,
    ERROR_KIND,
    MASK_USED,
    NOTE,
    PREPARED,
    STATUS,
    T_PREPARE,
    WorkItem,
    map_rows,
    replace_columns,
)
from batch_inpaint.params import MaskOptions, derive_seed, row_generation
from batch_inpaint.storage.uri import redact_uri, resolve
from batch_inpaint.vocab import ErrorKind, Status


def prepare_batch(table: pa.Table, ctx: JobContext) -> pa.Table:
    """The manifest's table with the PREPARED columns added, one work item per row."""
    detecting = DETECT_MASK in table.column_names  # the detect stage ran (job/stages/detect.py)
    schema = PREPARED.schema
    if detecting:  # with the note and the mask saved
        schema = schema.append(pa.field(MASK_USED, pa.string()))

    def one(_: int, row: dict) -> dict:
        extra: dict = {NOTE: row.get(NOTE), MASK_USED: None} if detecting else {}
        try:
            if detecting and row.get(STATUS) == Status.ERROR.value:  # kept as the stage left it
                item = WorkItem(Status.ERROR, error_kind=row[ERROR_KIND], error=row[ERROR])
            else:
                item = prepare_row(row, ctx, extra if detecting else None)
        except Exception as exc:  # noqa: BLE001 - a bad row becomes data, never a crash
            item = WorkItem.failed(row.get("id"), exc)
        out = item.values()
        if detecting:
            out[NOTE] = _with_detection(extra[NOTE], item.note)
            out[MASK_USED] = extra[MASK_USED]
        return out

    clock = StageClock(T_PREPARE, table.num_rows)
    return PREPARED.check(replace_columns(table, map_rows(table, one, schema, clock=clock)))


def row_seed(row: Mapping, base: int | None) -> int:
    """The row's own seed, else one derived from the job's base seed (if any) and the row id."""
    if row.get("seed") is not None:
        return int(row["seed"])
    rid = str(row["id"])
    return derive_seed(rid if base is None else f"{base}/{rid}")


def prepare_row(row: Mapping, ctx: JobContext, detected: dict | None = None) -> WorkItem:
    """`detected` (rows of a job with detection): the row's mask is its own united with the
    detected one; the note and the saved mask's path are set in it."""
    rid = row.get("id")
    if rid is None or str(rid) == "":
        raise InpaintError("row has no id", kind=ErrorKind.MISSING_ID.value)
    if not (row.get("image") or row.get("image_path") or row.get("image_bytes") is not None):
        where = "row has no image (no URI, no bytes)"
        if row.get("shard") is not None:  # a tar sample without an image member, a null cell
            where = (
                f"shard {row['shard']} row {row.get('index')} has no image (a WebDataset "
                "sample needs a jpg, jpeg, png or webp member; a Parquet row bytes or a path)"
            )
        raise InpaintError(where, kind=ErrorKind.MISSING_IMAGE.value)
    opts = ctx.options
    params = row_generation(row, opts.generation)  # a bad per-row value fails this row only
    data, where = _image_of(row, ctx)
    try:
        rgb, alpha = codec.decode_image_with_alpha(data, max_pixels=ctx.config.max_pixels)
    except InpaintError as exc:
        raise type(exc)(f"image {where}: {exc}", kind=exc.kind) from None
    h, w = rgb.shape[:2]
    concerns: list[str] = []  # the mask image's; the final mask's are added below
    if detected is None:
        raw = build_mask(row, (w, h), alpha, ctx.storage, ctx.manifest_base, opts.mask,
                         concerns=concerns)  # fmt: skip
    else:
        from batch_inpaint.job.stages import detect as ds

        given = given_mask(row, (w, h), alpha, ctx.storage, ctx.manifest_base, opts.mask,
                           concerns)  # fmt: skip
        raw = ds.row_mask(row, (w, h), given)
        if raw is None:  # no queries and no mask of its own
            raw = build_mask(row, (w, h), alpha, ctx.storage, ctx.manifest_base, opts.mask,
                             detecting=True)  # fmt: skip
        detected[NOTE] = ds.row_note(row, given)
    prep = prepare(rgb, raw, opts, ctx.spec.native_size, ctx.spec.size_multiple)
    check_memory(prep.regions, ctx)  # a size that can't fit fails here, not in a killed worker
    if detected is not None and prep.regions and ds.ran(row):
        # every pixel paste may change (feather included): outside it the output is the input
        detected[MASK_USED] = ds.save_mask(ctx, row["id"], prep.soft > 0)
    item = WorkItem(
        status=Status.PENDING if prep.regions else Status.SKIPPED,
        width=w,
        height=h,
        pixels=rgb.tobytes(),
        seed=row_seed(row, opts.generation.seed),
        params=params,
        regions=prep.regions,
        exif=_exif_bytes(data) if ctx.config.keep_exif else None,
        note=_note(raw, concerns),
    )
    if prep.regions:
        item.soft = [_soft_bytes(prep.soft[r.box[1] : r.box[3], r.box[0] : r.box[2]])
                     for r in prep.regions]  # fmt: skip
        item.crops = [np.ascontiguousarray(c).tobytes() for c in prep.crops]
        item.crop_masks = [np.ascontiguousarray(m).tobytes() for m in prep.crop_masks]
    return item


def _image_of(row: Mapping, ctx: JobContext) -> tuple[bytes, str]:
    """The row's image bytes and where they come from: a shard row's own bytes (never fetched),
    else its URI's (a manifest's `image`, or a shard struct's `path` when its bytes are null)."""
    if row.get("image_bytes") is not None:
        return row["image_bytes"], f"of shard {row.get('shard')} row {row.get('index')}"
    uri = resolve(str(row.get("image") or row["image_path"]), ctx.manifest_base)
    return ctx.storage.read_bytes(uri), redact_uri(uri)


def build_mask(
    row: Mapping,
    size: tuple[int, int],
    alpha,
    storage,
    manifest_base: str,
    options: MaskOptions,
    *,
    detecting: bool = False,
    concerns: list[str] | None = None,
) -> np.ndarray:
    """The union of every mask source the row gives; a row with none is an error. `detecting`:
    the job detects, so queries would have been a mask source too (the message says so)."""
    mask = given_mask(row, size, alpha, storage, manifest_base, options, concerns)
    if mask is None:
        give = "mask, mask_boxes, mask_polygons or mask_from_alpha"
        if row.get("shard") is not None:
            give = (
                "a mask: the shard's mask column (--mask-column) or, in a WebDataset sample, "
                "the member named by --mask-member"
            )
        if detecting:
            give = ("mask, mask_boxes, mask_polygons, mask_from_alpha or what to detect in it "
                    "(its 'detect' column, or --detect for every row)")  # fmt: skip
        raise MaskError(f"row has no mask: give {give}", kind=ErrorKind.NO_MASK.value)
    return mask


def given_mask(
    row: Mapping,
    size: tuple[int, int],
    alpha,
    storage,
    manifest_base: str,
    options: MaskOptions,
    concerns: list[str] | None = None,
) -> np.ndarray | None:
    """The union of the mask sources the row gives (mask image, boxes, polygons, alpha), or
    None when it gives none. Also what `batch-inpaint detect` adds its detections to.
    `concerns`: the mask image's mask_concerns are appended (grey, another size)."""
    parts = []
    if row.get("mask_bytes") is not None:  # a shard's mask column or member
        try:
            parts.append(masks.mask_from_image(row["mask_bytes"], size=size, options=options,
                                               concerns=concerns))  # fmt: skip
        except InpaintError as exc:
            where = f"of shard {row.get('shard')} row {row.get('index')}"
            raise type(exc)(f"mask {where}: {exc}", kind=exc.kind) from None
    if row.get("mask"):
        mask_uri = resolve(str(row["mask"]), manifest_base)
        data = storage.read_bytes(mask_uri)
        try:
            parts.append(masks.mask_from_image(data, size=size, options=options,
                                               concerns=concerns))  # fmt: skip
        except InpaintError as exc:
            raise type(exc)(f"mask {redact_uri(mask_uri)}: {exc}", kind=exc.kind) from None
    if row.get("mask_boxes"):
        parts.append(masks.mask_from_boxes(row["mask_boxes"], size))
    if row.get("mask_polygons"):
        parts.append(masks.mask_from_polygons(row["mask_polygons"], size))
    if row.get("mask_from_alpha"):
        if alpha is None:
            raise MaskError(
                "mask_from_alpha is set but the image has no alpha channel",
                kind=ErrorKind.NO_ALPHA.value,
            )
        parts.append(masks.mask_from_alpha(alpha, options))
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out | p
    return out


def _note(raw: np.ndarray, concerns: list[str]) -> str | None:
    """The row's note: the final mask's concerns (empty: why it is skipped; covering most of
    the image), then the mask image's own grey or size concerns."""
    from batch_inpaint.vocab import MaskConcern

    own = (MaskConcern.GREY.value, MaskConcern.SIZE.value)
    notes = masks.mask_concerns(raw) + [c for c in concerns if c.startswith(own)]
    return "; ".join(notes) or None


def _with_detection(found: str | None, own: str | None) -> str | None:
    """Detection's note, then the row's concerns; an empty mask is said by "nothing found"."""
    from batch_inpaint.vocab import MaskConcern

    parts = [p for p in (own or "").split("; ") if p]
    if found:
        parts = [found] + [p for p in parts if not p.startswith(MaskConcern.EMPTY.value)]
    return "; ".join(parts) or None


def _soft_bytes(soft: np.ndarray) -> bytes:
    # Quantised to uint8; 0 stays exactly 0, so untouched pixels stay bit-for-bit.
    return np.round(np.clip(soft, 0.0, 1.0) * 255).astype(np.uint8).tobytes()


def _exif_bytes(data: bytes) -> bytes | None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.info.get("exif")
