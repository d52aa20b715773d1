"""Masks for a manifest's rows, in process: read each row's image, detect its queries, write the
mask under {output}/masks/<output_key(id)>.png and a manifest that `batch-inpaint run` accepts as
it is. What `batch-inpaint detect` runs; a plain loop over batches (the job's stage comes later).

A row's mask is the union of what it already had (mask image, boxes, polygons, alpha) and what
was found. Rows where nothing is found keep the mask they had (often none) and say why in
`detect_note`; every row gets `detections` (list of {label, score, box}; null on error rows)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from batch_inpaint.detect.base import detections_arrow_type, parse_queries
from batch_inpaint.detect.masks import detection_boxes
from batch_inpaint.detect.provider import MaskProvider
from batch_inpaint.errors import ConfigError, InpaintError, error_kind
from batch_inpaint.image.codec import decode_image_with_alpha
from batch_inpaint.job.prepare import given_mask
from batch_inpaint.manifest import Manifest
from batch_inpaint.params import MaskOptions
from batch_inpaint.storage.uri import is_local, join, local_path, output_key, redact_uri, resolve

QUERY_COLUMN = "detect"  # per-row queries: 'a, b' or a list; replaces the command's for that row
NOTE_COLUMN = "detect_note"
DETECTIONS_COLUMN = "detections"
MANIFEST_NAME = "manifest.parquet"


def absolute(uri: str) -> str:
    """A URI that means the same from any folder: local paths made absolute."""
    return local_path(uri) if is_local(uri) else uri


def encode_mask(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def row_queries(row: dict[str, Any], default: Sequence[str]) -> list[str]:
    value = row.get(QUERY_COLUMN)
    if value is None or (isinstance(value, str) and not value.strip()):
        return list(default)
    try:
        return parse_queries(value, f"column '{QUERY_COLUMN}'")
    except ConfigError as exc:
        raise ConfigError(f"row {row.get('id')!r}: {exc}") from None


def detect_manifest(
    manifest: Manifest,
    output: str,
    provider: MaskProvider,
    queries: Sequence[str] = (),
    *,
    mask_options: MaskOptions = MaskOptions(),
    batch_size: int = 4,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Detect every row, write masks and {output}/manifest.parquet; returns a summary."""
    t0 = time.perf_counter()
    storage, base = manifest.storage, manifest.base
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    out_manifest = join(output, MANIFEST_NAME)
    if base is not None and absolute(join(base, "x")) == absolute(join(output, "x")):
        raise ConfigError(
            f"output {output} is the input manifest's folder: detect writes {MANIFEST_NAME} "
            "there; choose another output folder"
        )
    default = parse_queries(list(queries))
    rows = manifest.table.to_pylist()
    new: dict[str, list[Any]] = {
        "image": [], "mask": [], "mask_boxes": [], DETECTIONS_COLUMN: [], NOTE_COLUMN: [],
    }  # fmt: skip
    counts = {"rows": len(rows), "found": 0, "nothing_found": 0, "error": 0, "no_queries": 0}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        results = _detect_chunk(chunk, default, provider, storage, base)
        for row, res in zip(chunk, results, strict=True):
            values = _finish_row(row, res, provider, storage, base, output, mask_options)
            counts[values.pop("_count")] += 1
            for k, v in values.items():
                new[k].append(v)
        log(f"detect: {min(start + batch_size, len(rows))}/{len(rows)} rows")
    table = manifest.table
    types = {"mask_boxes": pa.list_(pa.list_(pa.float64())),
             DETECTIONS_COLUMN: detections_arrow_type()}  # fmt: skip
    for name in new:
        col = pa.array(new[name], types.get(name, pa.string()))
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, col)
        else:
            table = table.append_column(name, col)
    Manifest(table, storage).write(out_manifest)
    summary = {
        "manifest": out_manifest,
        "masks": join(output, "masks"),
        "queries": default,
        "counts": counts,
        "providers": provider.describe(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    storage.write_bytes(join(output, "detect.json"), json.dumps(summary, indent=2).encode())
    return summary


def _detect_chunk(chunk, default, provider, storage, base) -> list[dict[str, Any]]:
    """Per row: {'image', 'alpha', 'queries'} with 'detect' (a DetectResult) or 'error'."""
    items: list[dict[str, Any]] = []
    for row in chunk:
        item: dict[str, Any] = {}
        try:
            item["queries"] = row_queries(row, default)
            if item["queries"]:
                uri = resolve(str(row["image"]), base)
                try:
                    item["image"], item["alpha"] = decode_image_with_alpha(storage.read_bytes(uri))
                except InpaintError as exc:
                    raise type(exc)(f"image {redact_uri(uri)}: {exc}", kind=exc.kind) from None
        except InpaintError as exc:
            item["error"] = exc
        items.append(item)
    todo = [it for it in items if "image" in it]
    if todo:
        try:
            found = provider.masks([it["image"] for it in todo], [it["queries"] for it in todo])
            for it, res in zip(todo, found, strict=True):
                it["detect"] = res
        except InpaintError as exc:  # the batch failed: each of its rows says so
            for it in todo:
                it["error"] = exc
    return items


def _finish_row(row, item, provider, storage, base, output, options) -> dict[str, Any]:
    image = absolute(resolve(str(row["image"]), base)) if row.get("image") else row.get("image")
    mask = absolute(resolve(str(row["mask"]), base)) if row.get("mask") else None
    out = {"image": image, "mask": mask, "mask_boxes": row.get("mask_boxes"),
           DETECTIONS_COLUMN: None, NOTE_COLUMN: None}  # fmt: skip
    if "error" in item:
        exc = item["error"]
        out[NOTE_COLUMN] = f"error ({error_kind(exc)}): {exc}"
        out["_count"] = "error"
        return out
    if not item["queries"]:
        out[NOTE_COLUMN] = f"no queries: give --detect or the row's '{QUERY_COLUMN}' column"
        out["_count"] = "no_queries"
        return out
    res = item["detect"]
    out[DETECTIONS_COLUMN] = [d.to_dict() for d in res.detections]
    if not res.found:
        t = provider.threshold
        shown = "each detector's default" if t is None else t
        out[NOTE_COLUMN] = (f"nothing found for {', '.join(item['queries'])} "
                            f"(threshold {shown})")  # fmt: skip
        out["_count"] = "nothing_found"
        return out
    rgb = item["image"]
    size = (rgb.shape[1], rgb.shape[0])
    try:
        given = given_mask(row, size, item["alpha"], storage, base, options)
        union = res.mask if given is None else (res.mask | given)
        uri = absolute(join(output, "masks", output_key(str(row["id"]), ".png")))
        storage.write_bytes(uri, encode_mask(union))
    except InpaintError as exc:
        out[NOTE_COLUMN] = f"error ({error_kind(exc)}): {exc}"
        out["_count"] = "error"
        return out
    out["mask"] = uri
    if not res.segmented:  # SAM's masks are finer than boxes: adding boxes would undo that
        out["mask_boxes"] = list(row.get("mask_boxes") or []) + detection_boxes(res.detections)
    out["_count"] = "found"
    return out
