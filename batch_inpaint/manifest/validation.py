"""Manifest.validate: every problem a manifest row can have, found before any GPU time is spent.

Row checks (ids, URIs, masks, override values) run on every row; object checks (exists, readable,
decodes, mask size) run concurrently on all rows or a sample and read only image headers."""

from __future__ import annotations

import io
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batch_inpaint.detect.queries import parse_queries, queries_of  # the job's own rules
from batch_inpaint.errors import ConfigError, DecodeError, InpaintError, error_kind
from batch_inpaint.manifest.ids import bad_row_ids, collision_note
from batch_inpaint.manifest.schema import DETECT_COLUMN, MASK_COLUMNS, OVERRIDE_COLUMNS
from batch_inpaint.params import GenerationParams, row_generation
from batch_inpaint.storage.store import Storage
from batch_inpaint.storage.uri import redact_uri, resolve
from batch_inpaint.vocab import ErrorKind

_BASE = GenerationParams()

HEAD_BYTES = 256 * 1024  # enough for the size of any PNG/JPEG/WebP short of huge EXIF blocks


@dataclass(frozen=True)
class Problem:
    row_id: str | None
    column: str
    kind: str  # an ErrorKind value: the same word the job's error row would carry
    message: str


@dataclass
class ValidationReport:
    """What validate() found; `ok` is True when it found nothing."""

    problems: list[Problem] = field(default_factory=list)
    rows: int = 0
    rows_checked: int = 0  # rows whose objects were checked
    seconds: float = 0.0
    # suspicious masks (kind: a MaskConcern value): probably not what was meant, yet not errors
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self):
        return iter(self.problems)

    @property
    def bad_ids(self) -> set[str]:
        return {p.row_id for p in self.problems if p.row_id is not None}

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_table(self) -> pa.Table:
        return pa.Table.from_pylist(
            [vars(p) for p in self.problems],
            schema=pa.schema(
                [
                    ("row_id", pa.string()),
                    ("column", pa.string()),
                    ("kind", pa.string()),
                    ("message", pa.string()),
                ]  # fmt: skip
            ),
        )

    def warning_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.warnings))

    def summary(self) -> str:
        checked = f"objects checked for {self.rows_checked} of {self.rows} rows"
        warned = ""
        if self.warnings:
            kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.warning_counts().items()))
            warned = f"; {len(self.warnings)} suspicious mask(s) ({kinds}): look at them"
        if self.ok:
            return f"OK: {self.rows} rows, no problems ({checked}, {self.seconds:.1f}s){warned}"
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.counts().items()))
        return (
            f"{len(self.problems)} problems in {len(self.bad_ids)} of {self.rows} rows "
            f"({kinds}; {checked}){warned}"
        )

    def format(self, limit: int = 50) -> str:
        lines = [self.summary()]
        for found in (self.problems, self.warnings):
            if found:
                lines += self._rows(found, limit)
        return "\n".join(lines)

    def _rows(self, found: list[Problem], limit: int) -> list[str]:
        lines = []
        if found:
            shown = found[:limit]
            w_id = min(40, max(6, *(len(str(p.row_id)) for p in shown)))
            w_col = max(6, *(len(p.column) for p in shown))
            w_kind = max(7, *(len(p.kind) for p in shown))
            lines.append(f"{'ROW ID':{w_id}}  {'COLUMN':{w_col}}  {'PROBLEM':{w_kind}}  MESSAGE")
            for p in shown:
                rid = (
                    str(p.row_id) if len(str(p.row_id)) <= w_id else str(p.row_id)[: w_id - 1] + "…"
                )
                lines.append(f"{rid:{w_id}}  {p.column:{w_col}}  {p.kind:{w_kind}}  {p.message}")
            if len(found) > limit:
                lines.append(f"... and {len(found) - limit} more (report.to_table())")
        return lines

    __str__ = format


def _probe(storage: Storage, uri: str, decode: bool) -> dict[str, Any]:
    """Size (after EXIF orientation) and alpha of an image, from its header where possible."""
    if decode:
        return probe_bytes(storage.read_bytes(uri), redact_uri(uri), decode=True)
    data = storage.read_bytes(uri, 0, HEAD_BYTES)
    whole = (lambda: storage.read_bytes(uri)) if len(data) >= HEAD_BYTES else None
    return probe_bytes(data, redact_uri(uri), whole=whole)


def probe_bytes(data: bytes, where: str, decode: bool = False, whole: Any = None) -> dict[str, Any]:
    """_probe on bytes in hand (shards hold them); `whole()` reads the rest when the header is
    longer than `data`. Errors name `where`."""
    from PIL import Image

    from batch_inpaint.image.codec import check_format, open_image

    if decode:
        im = open_image(data)
        return {"size": im.size, "alpha": _has_alpha(im)}
    if not data:
        raise DecodeError(f"{where}: empty object (0 bytes)")
    for attempt in (0, 1):
        try:
            with Image.open(io.BytesIO(data)) as im:
                try:
                    check_format(im)
                except DecodeError as bad:
                    raise DecodeError(f"{where}: {bad}") from None
                w, h = im.size
                if _orientation(im) in (5, 6, 7, 8):  # rotated 90°: EXIF transposes it
                    w, h = h, w
                return {"size": (w, h), "alpha": _has_alpha(im)}
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            if attempt == 0 and whole is not None:
                data = whole()  # header longer than our first read
                continue
            why = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
            raise DecodeError(f"{where}: not a readable image: {why}") from None
    raise AssertionError("unreachable")


def _orientation(im: Any) -> int | None:
    """EXIF orientation without decoding: PNG's getexif() would load the whole image."""
    from PIL import Image

    if im.format in ("JPEG", "MPO", "TIFF", "WEBP"):
        return im.getexif().get(0x0112)
    raw = im.info.get("exif")
    if not raw:
        return None
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(0x0112)


def _has_alpha(im: Any) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info


def _check_geometry(rid: Any, row: dict, problems: list[Problem]) -> None:
    for box in row.get("mask_boxes") or []:
        good = box is not None and len(box) == 4 and None not in box
        if not (good and box[2] > box[0] and box[3] > box[1]):
            msg = f"box {box} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0"
            problems.append(Problem(rid, "mask_boxes", ErrorKind.BAD_BOX.value, msg))
    for poly in row.get("mask_polygons") or []:
        if (
            poly is None
            or len(poly) < 3
            or any(p is None or len(p) != 2 or None in p for p in poly)
        ):
            msg = f"polygon {poly} must have at least 3 [x, y] points"
            problems.append(Problem(rid, "mask_polygons", ErrorKind.BAD_POLYGON.value, msg))


def detects(rid: Any, row: dict, queries: Sequence[str], problems: list[Problem]) -> bool:
    """Whether `run` would detect a mask for the row (its `detect` value, else the job's
    `queries`); a bad value is the row's problem, as it would be its error row in the job."""
    if not queries and DETECT_COLUMN not in row:
        return False
    try:
        return bool(queries_of(row, queries))
    except ConfigError as exc:
        problems.append(Problem(rid, DETECT_COLUMN, error_kind(exc), str(exc)))
        return True  # its problem is said: no `no_mask` on top


def _check_row(
    rid: Any, row: dict, storage: Storage, problems: list[Problem], queries: Sequence[str] = ()
) -> bool:
    """Row-only checks; True when the row's URIs may be fetched. `queries`: the job's."""
    fetchable = True
    if not row.get("image"):
        problems.append(Problem(rid, "image", ErrorKind.MISSING_IMAGE.value, "no image URI"))
        fetchable = False
    for col in ("image", "mask"):
        if row.get(col):
            try:
                storage.check(row[col])
            except InpaintError as exc:
                problems.append(Problem(rid, col, error_kind(exc), str(exc)))
                fetchable = False
    has_mask = bool(row.get("mask") or row.get("mask_boxes") or row.get("mask_polygons")) or bool(
        row.get("mask_from_alpha")
    )
    if not detects(rid, row, queries, problems) and not has_mask:
        msg = (f"no mask: set one of {', '.join(MASK_COLUMNS)}, or queries to detect (its "
               f"'{DETECT_COLUMN}' column, or --detect for every row)")  # fmt: skip
        problems.append(Problem(rid, "mask", ErrorKind.NO_MASK.value, msg))
    _check_geometry(rid, row, problems)
    for col in OVERRIDE_COLUMNS:  # one column at a time, so every bad column is reported
        if row.get(col) is not None:
            try:
                row_generation({col: row[col]}, _BASE)  # the job's own check of row values
            except ConfigError as exc:
                problems.append(Problem(rid, col, error_kind(exc), str(exc)))
    return fetchable


def validate_table(
    table: pa.Table,
    storage: Storage,
    *,
    check_objects: bool = True,
    sample: int | None = None,
    decode: bool = False,
    max_workers: int = 32,
    seed: int = 0,
    base: str | None = None,
    queries: Sequence[str] = (),
    mask_options: Any = None,
) -> ValidationReport:
    """`queries`: the job's (`run --detect`): a row without a mask of its own is then fine.
    Mask images of the checked rows are decoded (by `mask_options`, the job's) and suspicious
    ones are the report's `warnings` (image/masks.mask_concerns)."""
    start = time.monotonic()
    problems: list[Problem] = []
    queries = parse_queries(list(queries), "--detect")
    wanted = ("id", "image", *MASK_COLUMNS, *OVERRIDE_COLUMNS, DETECT_COLUMN, "detections")
    cols = [c for c in wanted if c in table.column_names]
    rows = table.select(cols).to_pylist()
    if base:  # as the job does: relative URIs are relative to the manifest's folder
        for row in rows:
            for c in ("image", "mask"):
                if row.get(c):
                    row[c] = resolve(row[c], base)
    counts = Counter(r["id"] for r in rows)
    made = bad_row_ids([r["id"] for r in rows])  # their result ids, unlike any row's id
    fetch: list[int] = []
    for i, row in enumerate(rows):
        rid = row["id"]
        if rid is None or rid == "":
            msg = f"row {i}: id is null or empty" + collision_note(made[i])
            problems.append(Problem(None, "id", ErrorKind.MISSING_ID.value, msg))
        elif counts[rid] > 1:
            msg = f"id {rid!r} appears {counts[rid]} times (row {i})" + collision_note(made[i])
            problems.append(Problem(rid, "id", ErrorKind.DUPLICATE_ID.value, msg))
        if _check_row(rid, row, storage, problems, queries):
            fetch.append(i)
    if not check_objects:
        fetch = []
    elif sample is not None and sample < len(fetch):
        fetch = sorted(random.Random(seed).sample(fetch, sample))
    uris = {rows[i][c] for i in fetch for c in ("image", "mask") if rows[i].get(c)}
    from batch_inpaint.storage.credentials import missing_credentials

    no_key = missing_credentials(storage.options, sorted(uris))
    if no_key:  # said once, not once per row and object; those objects are not fetched
        problems.append(Problem(None, "credentials", ErrorKind.ACCESS_DENIED.value, no_key))
        uris = {u for u in uris if not u.startswith(("s3://", "s3a://"))}
    results: dict[str, Any] = {}
    concerns: dict[str, list[str]] = {}
    if uris:

        def probe(uri: str) -> tuple[str, Any]:
            try:
                return uri, _probe(storage, uri, decode)
            except Exception as exc:  # reported per row below
                return uri, exc

        mask_uris = {rows[i]["mask"] for i in fetch if rows[i].get("mask") in uris}

        def look(uri: str) -> tuple[str, Any]:
            try:
                return uri, _mask_concerns(storage, uri, mask_options)
            except Exception:  # noqa: BLE001 - the probe says what is wrong with it
                return uri, []

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(uris)))) as pool:
            results = dict(pool.map(probe, sorted(uris)))
            concerns = dict(pool.map(look, sorted(mask_uris)))
    warnings: list[Problem] = []
    for i in fetch:
        row, rid = rows[i], rows[i]["id"]
        info = {}
        for col in ("image", "mask"):
            got = results.get(row.get(col)) if row.get(col) in uris else None
            if isinstance(got, BaseException):
                problems.append(Problem(rid, col, error_kind(got), str(got)))
            elif got is not None:
                info[col] = got
        for note in concerns.get(row.get("mask") or "", []):
            kind, _, why = note.partition(": ")
            warnings.append(Problem(rid, "mask", kind, why))
        img, msk = info.get("image"), info.get("mask")
        if img and msk and img["size"] != msk["size"]:
            (iw, ih), (mw, mh) = img["size"], msk["size"]
            msg = f"mask is {mw}x{mh} but the image is {iw}x{ih}"
            problems.append(Problem(rid, "mask", ErrorKind.SIZE_MISMATCH.value, msg))
        if img and row.get("mask_from_alpha") and not img["alpha"]:
            msg = "mask_from_alpha is set but the image has no alpha channel"
            problems.append(Problem(rid, "mask_from_alpha", ErrorKind.NO_ALPHA.value, msg))
    return ValidationReport(problems, len(rows), len(fetch), time.monotonic() - start, warnings)


def _mask_concerns(storage: Storage, uri: str, options: Any) -> list[str]:
    """The mask image's concerns by the job's rule (empty, covering most, grey)."""
    from batch_inpaint.image.masks import mask_from_image
    from batch_inpaint.params import MaskOptions

    found: list[str] = []
    mask_from_image(storage.read_bytes(uri), None, options or MaskOptions(), concerns=found)
    return found
