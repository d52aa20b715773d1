"""Masks for a manifest's rows, in process: read each row's image, detect its queries, write the
mask under {output}/masks/<output_key(id)>.png and a manifest that `batch-inpaint run` accepts as
it is. What `batch-inpaint detect` runs: a plain loop over batches, in process (the job's own
stage is job/stages/detect.py). It sits beside the job: it shares the job's output checks
(guard), its row masks (prepare.given_mask) and its error rows (workitem.row_error).

A row's mask is the union of what it already had (mask image, boxes, polygons, alpha) and what
was found. Rows where nothing is found keep the mask they had (often none) and say why in
`detect_note`; every row gets `detections` (list of {label, score, box}; null on error rows)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from batch_inpaint.batches import isolate
from batch_inpaint.detect.base import detections_arrow_type
from batch_inpaint.detect.masks import detection_boxes
from batch_inpaint.detect.provider import MaskProvider
from batch_inpaint.detect.queries import QUERY_COLUMN as QUERY_COLUMN
from batch_inpaint.detect.queries import parse_queries, row_queries
from batch_inpaint.errors import ConfigError, InpaintError, ModelError
from batch_inpaint.image.codec import decode_image_with_alpha
from batch_inpaint.image.mask_png import encode_mask
from batch_inpaint.job.stages.prepare import given_mask
from batch_inpaint.job.stages.workitem import row_error
from batch_inpaint.manifest.manifest import Manifest
from batch_inpaint.params import MaskOptions
from batch_inpaint.storage.uri import is_local, join, local_path, output_key, redact_uri, resolve
from batch_inpaint.vocab import ErrorKind

NOTE_COLUMN = "detect_note"
DETECTIONS_COLUMN = "detections"
MANIFEST_NAME = "manifest.parquet"
# detect's own marker, not run's `_BATCH_INPAINT`: neither command takes the other's output
# for its own (both write masks/), docs/masks.md
MARKER = "_BATCH_INPAINT_DETECT"
OWN_NAMES = (MANIFEST_NAME, "masks", "detect.json", MARKER)  # all detect writes in its output


def absolute(uri: str) -> str:
    """A URI that means the same from any folder: local paths made absolute."""
    return local_path(uri) if is_local(uri) else uri


def check_output(manifest_uri: str, manifest: Manifest, output: str,
                 allow_non_empty: bool = False) -> str:  # fmt: skip
    """`run`'s output checks (job/driver/guard.py), for detect's output, before any model loads:
    ConfigError when the output equals, contains or lies inside the manifest or a folder its
    images or masks are in, when it is a `run` output, or when it is not empty and no detect
    made it (allow_non_empty: share it, if none of OWN_NAMES is there yet). Returns 'ours' (an
    earlier detect's: rerun into it), 'new' or 'adopted', for claim_output."""
    import pyarrow.compute as pc

    from batch_inpaint.job.driver import guard

    storage = manifest.storage
    storage.check(output)
    table = manifest.table
    cols = [pc.cast(table.column(c), pa.string()) for c in ("image", "mask")
            if c in table.column_names]  # fmt: skip
    uris = pa.chunked_array([c for col in cols for c in col.chunks], pa.string())
    guard.check_output_location(output, guard.input_locations(manifest_uri, manifest.base or "",
                                                              uris))  # fmt: skip
    if storage.exists(join(output, MARKER)):
        return "ours"
    state = guard.check_owner(storage, output, allow_non_empty)  # refuses a non-empty output
    if state in ("ours", "legacy"):
        raise ConfigError(
            f"output {redact_uri(output)} is a `batch-inpaint run` output; detect would write "
            "over its masks/. Choose another location"
        )
    clash = [n for n in OWN_NAMES if state == "adopted" and storage.exists(join(output, n))]
    if clash:
        raise ConfigError(
            f"output {redact_uri(output)} already holds {clash}, names detect writes, and no "
            "`batch-inpaint detect` made them; it will not overwrite them. Choose another location"
        )
    return state


def claim_output(storage, output: str, state: str) -> None:
    """Mark the output as detect's (once; a rerun into it finds the marker: check_output)."""
    from batch_inpaint import __version__

    if state == "ours":
        return
    body = {"tool": "batch-inpaint", "command": "detect", "version": __version__,
            "created_at": time.time(), "adopted": state == "adopted"}  # fmt: skip
    storage.write_bytes(join(output, MARKER), json.dumps(body).encode(), overwrite=False,
                        root=output)  # fmt: skip


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
    """Detect every row, write masks and {output}/manifest.parquet; returns a summary. Check and
    claim the output first (check_output, claim_output), as `batch-inpaint detect` does."""
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
    storage.write_bytes(join(output, "detect.json"), json.dumps(summary, indent=2).encode(),
                        root=output)  # fmt: skip
    return summary


def _detect_chunk(chunk, default, provider, storage, base) -> list[dict[str, Any]]:
    """Per row: {'image', 'alpha', 'queries'} with 'detect' (a DetectResult) or 'error'."""
    items: list[dict[str, Any]] = []
    for row in chunk:
        item: dict[str, Any] = {}
        try:
            item["queries"] = row_queries(row, default)
            if item["queries"]:
                item["image"], item["alpha"] = _read_image(row, storage, base)
        except Exception as exc:  # noqa: BLE001 - a bad row becomes data, never a crash
            item.pop("image", None)
            item["error"] = exc
        items.append(item)
    _detect_split([it for it in items if "image" in it], provider)
    return items


def _read_image(row, storage, base) -> tuple[np.ndarray, np.ndarray | None]:
    uri = resolve(str(row["image"]), base)
    shown = redact_uri(uri)
    try:
        return decode_image_with_alpha(storage.read_bytes(uri))
    except InpaintError as exc:  # name the image once: storage's messages start with it
        msg = str(exc) if str(exc).startswith(shown) else f"{shown}: {exc}"
        raise type(exc)(f"image {msg}", kind=exc.kind) from None


def _detect_split(todo: list[dict[str, Any]], provider: MaskProvider) -> None:
    """Detect a batch, split on failure (batches.isolate), so one bad image fails alone with
    kind `detect`, as in the job's stage (job/stages/detect.py)."""

    def run(items: list[dict[str, Any]]) -> list[Any]:
        return provider.masks([it["image"] for it in items], [it["queries"] for it in items])

    for it, res in zip(todo, isolate(run, todo, _detector_failed), strict=True):
        it["error" if isinstance(res, Exception) else "detect"] = res


def _detector_failed(_: dict[str, Any], exc: Exception) -> InpaintError:
    # the providers' ModelErrors say which model failed already
    msg = str(exc) if isinstance(exc, ModelError) else f"the detector failed: {exc}"
    if not isinstance(exc, InpaintError):
        msg = f"the detector failed: {type(exc).__name__}: {exc}"
    return InpaintError(msg, kind=ErrorKind.DETECT.value)


def _finish_row(row, item, provider, storage, base, output, options) -> dict[str, Any]:
    image = absolute(resolve(str(row["image"]), base)) if row.get("image") else row.get("image")
    mask = absolute(resolve(str(row["mask"]), base)) if row.get("mask") else None
    out = {"image": image, "mask": mask, "mask_boxes": row.get("mask_boxes"),
           DETECTIONS_COLUMN: None, NOTE_COLUMN: None}  # fmt: skip
    if "error" in item:
        return _error(out, row, item["error"])
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
        storage.write_bytes(uri, encode_mask(union), root=output)
    except Exception as exc:  # noqa: BLE001 - a bad row becomes data, never a crash
        return _error(out, row, exc)
    out["mask"] = uri
    if not res.segmented:  # SAM's masks are finer than boxes: adding boxes would undo that
        out["mask_boxes"] = list(row.get("mask_boxes") or []) + detection_boxes(res.detections)
    out["_count"] = "found"
    return out


def _error(out: dict[str, Any], row: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    kind, msg = row_error(row.get("id"), exc)
    if str(exc).startswith(f"row {row.get('id')!r}:"):  # row_queries' errors name it already
        msg = str(exc)
    out[NOTE_COLUMN], out["_count"] = f"error ({kind}): {msg}", "error"
    return out
