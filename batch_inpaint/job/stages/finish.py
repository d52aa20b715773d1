"""Stage 3 (CPU tasks): paste the results back, encode, write the image, build the result row.

Reads MODELLED, returns the manifest's own columns plus the result columns of RESULT_SCHEMA (the
`_bi_` columns dropped); a row that fails here becomes an error row like any other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import numpy as np
import pyarrow as pa

from batch_inpaint.config import JobConfig
from batch_inpaint.detect.base import detections_arrow_type
from batch_inpaint.errors import InpaintError
from batch_inpaint.image import codec, geometry
from batch_inpaint.job.io.output_folder import OutputFolder
from batch_inpaint.job.io.shard_source import BYTES
from batch_inpaint.job.io.shard_writer import OUTPUT_BYTES
from batch_inpaint.job.io.writers import FilesWriter, open_writer
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.timing import StageClock
from batch_inpaint.job.stages.workitem import (
    DETECTIONS,
    EXIF,
    FINISHED,
    MASK_USED,
    MODELLED,
    NOTE,
    PARAMS,
    PIXELS,
    REGIONS,
    RESULTS,
    SOFT,
    STATUS,
    T_DETECT,
    P,
    map_rows,
    pixels_from,
    region_from,
    row_error,
)
from batch_inpaint.storage.uri import redact_uri
from batch_inpaint.vocab import ErrorKind, Status

_OUTPUT_OF = {Status.PENDING.value: Status.OK.value, Status.SKIPPED.value: Status.SKIPPED.value}


def finish_batch(table: pa.Table, ctx: JobContext) -> pa.Table:
    MODELLED.check(table)
    cfg = ctx.config
    described = ctx.spec.describe()
    given = _given_detections(table)  # a `batch-inpaint detect` manifest's: not detected again
    writer = open_writer(cfg, ctx.storage)
    shards = getattr(writer, "shards", False)  # images go back to the driver (shard_writer.py)

    def one(_: int, item: dict) -> dict:
        rid = item["id"]
        status, kind, err = item[STATUS], item[f"{P}error_kind"], item[f"{P}error"]
        rel = sha = sent = None
        if status in _OUTPUT_OF:
            try:
                if shards and status == Status.SKIPPED.value:  # its shard keeps the input's bytes
                    data = item.get("image_bytes")
                else:
                    data = sent = _finish_row(item, cfg)
                rel = writer.write(rid, data, item)  # job/io/writers.py: images/<key>, data/...
                sha = None if data is None else hashlib.sha256(data).hexdigest()
                status = _OUTPUT_OF[status]
            except Exception as exc:  # noqa: BLE001 - one row's failure stays in its row
                status, (kind, err), rel, sha = Status.ERROR.value, row_error(rid, exc), None, None
                sent = None
        params, detections = item[PARAMS], item.get(DETECTIONS)
        return {
            "status": status,
            "error_kind": kind,
            "error": err,
            "output": rel,  # relative to the output root: a copied or moved output resumes
            "sha256": sha,
            "width": item[f"{P}width"],
            "height": item[f"{P}height"],
            "seed": item[f"{P}seed"],
            "params": None if params is None else json.dumps(params, sort_keys=True),
            "prepare_s": item[f"{P}t_prepare"],
            "model_s": item[f"{P}t_model"],
            "finished_at": dt.datetime.now(dt.timezone.utc),
            **described,
            # detection's columns (job/stages/detect.py), in jobs with queries
            "detections": item.get("detections") if detections is None and given else detections,
            "mask_used": item.get(MASK_USED),
            "note": item.get(NOTE),
            "detect_s": item.get(T_DETECT),
            OUTPUT_BYTES: sent,
        }

    reads = ["id", *MODELLED.schema.names, DETECTIONS, MASK_USED, NOTE, T_DETECT, "detections"]
    schema = FINISHED.schema
    if shards:  # a shard row: its place, its input's bytes (skipped), its new image (ok)
        reads += ["shard", "index", "image_bytes"]
        schema = schema.append(pa.field(OUTPUT_BYTES, pa.binary()))
    out = map_rows(table, one, schema, reads, StageClock("write_s", table.num_rows))
    writer.close()
    keep = [c for c in table.column_names
            if not c.startswith(P) and c not in out and c not in BYTES]  # fmt: skip
    result = redact_columns(
        table.select(keep)
    )  # a manifest column named like a result one gives way
    for name, column in out.items():
        result = result.append_column(name, column)
    return FINISHED.check(result)


def _given_detections(table: pa.Table) -> bool:
    """Whether the manifest has a `detections` column of the results' type."""
    if "detections" not in table.column_names:
        return False
    return table.schema.field("detections").type.equals(detections_arrow_type())


def output_rel(cfg: JobConfig, row_id: str) -> str:
    """Where a row's image goes, relative to the output root (the files writer's name)."""
    return FilesWriter(OutputFolder(None, cfg.output), cfg.extension).rel(row_id)


def output_uri(cfg: JobConfig, row_id: str) -> str:
    return OutputFolder(None, cfg.output).uri(output_rel(cfg, row_id))


def redact_columns(table: pa.Table) -> pa.Table:
    """The manifest's URI columns as results store them: without passwords and signatures."""
    for name in ("image", "mask"):
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            values = [None if v is None else redact_uri(v) for v in table.column(name).to_pylist()]
            table = table.set_column(
                table.schema.get_field_index(name), name, pa.array(values, pa.string())
            )
    return table


def _finish_row(c: dict, cfg: JobConfig) -> bytes:
    w, h = c[f"{P}width"], c[f"{P}height"]
    original = pixels_from(c[PIXELS], h, w, 3)
    if c[STATUS] == Status.SKIPPED.value:
        image = original
    else:
        soft = np.zeros((h, w), np.uint8)  # paste reads it inside the boxes only
        pieces = []
        for value, res, weights in zip(c[REGIONS], c[RESULTS], c[SOFT], strict=True):
            region = region_from(value)
            x0, y0, x1, y1 = region.box
            soft[y0:y1, x0:x1] = pixels_from(weights, y1 - y0, x1 - x0)
            pieces.append((region, pixels_from(res, region.work_size[1], region.work_size[0], 3)))
        image = geometry.paste(original, soft, pieces)
    exif = c.get(EXIF) if cfg.keep_exif else None
    data = codec.encode_image(
        image,
        cfg.image_format,
        quality=cfg.jpeg_quality,
        png_compress_level=cfg.png_compress_level,
        exif=exif,
    )
    # Checked here, once, so finalize need not read every output back: what is written decodes.
    if codec.ENCODE_FORMATS.get(cfg.image_format) == "PNG" and exif is None:
        codec.check_png(data, (w, h))  # OpenCV's PNG, whole: a full decode cost 6-9 ms a row
        return data
    check = codec.open_image(data, max_pixels=max(cfg.max_pixels, w * h))
    if check.size != (w, h):
        raise InpaintError(
            f"encoded output is {check.size}, expected {(w, h)}", kind=ErrorKind.ENCODE.value
        )
    return data
