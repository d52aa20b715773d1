"""`manifest validate` for a shard set (manifest/shard_set.py): every shard (or a sample of
shards) read with the job's own format, and each row checked by the rules validate applies to a
manifest of URIs (manifest/validation.py): an id, an image that decodes, a mask (or queries to
detect one) of the image's size, and suspicious masks as warnings. The report is the same
ValidationReport. A shard the job could not read is a problem of its own, naming the shard.

Duplicate ids are found among the shards read (all of them, unless `sample`)."""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from batch_inpaint.detect.queries import parse_queries
from batch_inpaint.errors import InpaintError, error_kind
from batch_inpaint.job.io.shard_formats import ShardColumns
from batch_inpaint.job.io.shard_source import shard_format
from batch_inpaint.manifest.schema import DETECT_COLUMN
from batch_inpaint.manifest.validation import Problem, ValidationReport, detects, probe_bytes
from batch_inpaint.storage.uri import resolve
from batch_inpaint.vocab import ErrorKind


def validate_shards(
    found,
    *,
    sample: int | None = None,
    decode: bool = False,
    queries: Sequence[str] = (),
    mask_options: Any = None,
    seed: int = 0,
) -> ValidationReport:
    """Every problem in the shards of `found` (a ShardSet), or in `sample` shards of it."""
    start = time.monotonic()
    queries = parse_queries(list(queries), "--detect")
    k = found.keys
    columns = ShardColumns(image=k["image_column"], mask=k["mask_column"], id=k["id_column"],
                           mask_member=k["mask_member"])  # fmt: skip
    fmt = shard_format(found.format)
    shards = list(found.shards)
    if sample is not None and sample < len(shards):
        shards = sorted(random.Random(seed).sample(shards, sample), key=found.shards.index)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    rows: list[dict] = []
    for shard in shards:
        try:
            table = fmt.read(found.storage.read_bytes(shard.uri), shard.name, columns)
        except (InpaintError, ValueError) as exc:
            message = str(exc) if shard.name in str(exc) else f"shard {shard.name}: {exc}"
            problems.append(Problem(None, "shard", error_kind(exc), message))
            continue
        for row in table.to_pylist():
            row["shard"] = shard.name
            rows.append(row)
    counts = Counter(r["id"] for r in rows)
    for row in rows:
        _check(row, counts, found, queries, decode, mask_options, problems, warnings)
    return ValidationReport(problems, len(rows), len(rows), time.monotonic() - start, warnings)


def _check(row: dict, counts: Counter, found, queries, decode: bool, mask_options: Any,
           problems: list[Problem], warnings: list[Problem]) -> None:  # fmt: skip
    rid, where = row["id"], f"shard {row['shard']} row {row['index']}"
    if not rid:
        problems.append(Problem(None, "id", ErrorKind.MISSING_ID.value, f"{where}: no id"))
    elif counts[rid] > 1:
        msg = f"id {rid!r} appears {counts[rid]} times ({where})"
        problems.append(Problem(rid, "id", ErrorKind.DUPLICATE_ID.value, msg))
    info = {}
    image = row["image_bytes"]
    if image is None and row.get("image_path") and found.format == "parquet":
        image = _read(found, row["image_path"], rid, where, problems)  # a struct's path
    elif image is None:
        what = "no image member (jpg, jpeg, png, webp)" if found.format == "webdataset" else (
            "no image bytes")  # fmt: skip
        problems.append(Problem(rid, "image", ErrorKind.MISSING_IMAGE.value, f"{where}: {what}"))
    mask = row["mask_bytes"]
    if mask is None and row.get("mask"):  # a Parquet mask column of URIs
        mask = _read(found, row["mask"], rid, where, problems)
    for col, data in (("image", image), ("mask", mask)):
        if data is not None:
            try:
                info[col] = probe_bytes(data, f"{where} {col}", decode=decode)
            except InpaintError as exc:
                problems.append(Problem(rid, col, error_kind(exc), str(exc)))
    if mask is None and not detects(rid, row, queries, problems) and not row.get("mask"):
        msg = (f"{where}: no mask (column or member {_mask_name(found)}), and no queries to "
               f"detect one ('{DETECT_COLUMN}' column, or --detect)")  # fmt: skip
        problems.append(Problem(rid, "mask", ErrorKind.NO_MASK.value, msg))
    img, msk = info.get("image"), info.get("mask")
    if img and msk and img["size"] != msk["size"]:
        (iw, ih), (mw, mh) = img["size"], msk["size"]
        msg = f"{where}: mask is {mw}x{mh} but the image is {iw}x{ih}"
        problems.append(Problem(rid, "mask", ErrorKind.SIZE_MISMATCH.value, msg))
    if msk:
        from batch_inpaint.image.masks import mask_from_image
        from batch_inpaint.params import MaskOptions

        concerns: list[str] = []
        with contextlib.suppress(InpaintError):  # the probe said what is wrong with it
            mask_from_image(mask, None, mask_options or MaskOptions(), concerns=concerns)
        for note in concerns:
            kind, _, why = note.partition(": ")
            warnings.append(Problem(rid, "mask", kind, why))


def _read(found, uri: str, rid, where: str, problems: list[Problem]) -> bytes | None:
    try:
        return found.storage.read_bytes(resolve(uri, found.root))
    except InpaintError as exc:
        problems.append(Problem(rid, "image", error_kind(exc), f"{where}: {exc}"))
        return None


def _mask_name(found) -> str:
    key = "mask_member" if found.format == "webdataset" else "mask_column"
    return repr(found.keys[key])
