"""The manifest and result tables' Arrow schemas, in one place, with their version.

A manifest row names an image, a mask (one of four ways) and optional per-row overrides of the
job's generation defaults; any other column is carried through unchanged to the result row."""

from __future__ import annotations

import difflib
import re

import pyarrow as pa
import pyarrow.types as pat

from batch_inpaint.detect.base import detections_arrow_type
from batch_inpaint.errors import ManifestError
from batch_inpaint.option import kind, meta
from batch_inpaint.params import ROW_COLUMNS, ROW_FIELDS

SCHEMA_VERSION = 1
VERSION_KEY = b"batch_inpaint.schema_version"

REQUIRED_COLUMNS = ("id", "image")
MASK_COLUMNS = ("mask", "mask_boxes", "mask_polygons", "mask_from_alpha")
DETECT_COLUMN = "detect"  # per-row detection queries (docs/masks.md)
# Per-row overrides: the GenerationParams fields marked row=True, under their own names.
OVERRIDE_COLUMNS = ROW_COLUMNS
_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


MANIFEST_SCHEMA = pa.schema(
    [
        _field("id", pa.string(), "unique row id; names the output", nullable=False),
        _field("image", pa.string(), "URI or path of the image", nullable=False),
        _field("mask", pa.string(), "URI of a mask image (white = fill)"),
        _field("mask_boxes", pa.list_(pa.list_(pa.float64())), "boxes [x0, y0, x1, y1] in px"),
        _field(
            "mask_polygons",
            pa.list_(pa.list_(pa.list_(pa.float64()))),
            "polygons, each a list of [x, y] points in px",
        ),
        _field("mask_from_alpha", pa.bool_(), "true: transparent pixels of the image are filled"),
        *(
            _field(col, _ARROW[kind(f)[0]], f"overrides the job's value: {meta(f).help}")
            for col, f in ROW_FIELDS.items()
        ),
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()},
)


RESULT_SCHEMA = pa.schema(
    [
        _field("id", pa.string(), "the manifest row's id", nullable=False),
        _field("status", pa.string(), "ok | error | skipped", nullable=False),
        _field("error_kind", pa.string(), "errors.error_kind of the failure (error rows)"),
        _field("error", pa.string(), "the error message (error rows)"),
        _field("output", pa.string(), "URI of the written image"),
        _field("sha256", pa.string(), "hex SHA-256 of the written bytes"),
        _field("width", pa.int32(), "output width in px"),
        _field("height", pa.int32(), "output height in px"),
        _field("seed", pa.int64(), "the seed used"),
        _field("model", pa.string(), "model id or URI"),
        _field("revision", pa.string(), "model revision / commit"),
        _field("backend", pa.string(), "diffusers | opencv | tiny"),
        _field("params", pa.string(), "JSON of the generation parameters used"),
        _field("prepare_s", pa.float64(), "seconds to fetch, decode and plan"),
        _field("model_s", pa.float64(), "seconds in the model (this row's share of its batch)"),
        _field("write_s", pa.float64(), "seconds to paste, encode and write"),
        _field("finished_at", pa.timestamp("ms", tz="UTC"), "when the row finished"),
        _field(
            "detections",
            detections_arrow_type(),
            "what detection found: label, score, box (null: the row did not detect)",
        ),
        _field(
            "mask_used",
            pa.string(),
            "the detected row's final mask, relative to the output (masks/<key>.png)",
        ),
        _field("note", pa.string(), "why a row was skipped, or what detection found"),
        _field(
            "residual_score",
            pa.float64(),
            "with verify: the highest score still found inside the mask",
        ),
        _field(
            "detect_s",
            pa.float64(),
            "seconds to fetch, decode and detect (this row's share of its detector batch); "
            "null: the row did not detect",
        ),  # fmt: skip
        _field(
            "verify_s",
            pa.float64(),
            "seconds to read the output and detect again (this row's share); null: not verified",
        ),  # fmt: skip
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()},
)


def _string_like(t: pa.DataType) -> bool:
    return pat.is_string(t) or pat.is_large_string(t) or pat.is_string_view(t)


def safe_cast_ok(src: pa.DataType, dst: pa.DataType) -> bool:
    """Casts that never change a value's meaning: wider ints, ints/floats to float64, whole
    floats to int64 (a fraction fails the cast), string flavours, all-null columns,
    dictionary-encoded strings, lists of the same."""
    if src.equals(dst) or pat.is_null(src):
        return True
    if pat.is_dictionary(src):
        return _string_like(dst) and _string_like(src.value_type)
    if _string_like(dst):
        return _string_like(src)
    if pat.is_integer(dst):  # floats too (pandas turns int columns with gaps into float64):
        return pat.is_integer(src) or pat.is_floating(src)  # the cast refuses fractions
    if pat.is_floating(dst):
        return pat.is_integer(src) or pat.is_floating(src)
    if pat.is_list(dst) or pat.is_large_list(dst):
        nested = pat.is_list(src) or pat.is_large_list(src) or pat.is_fixed_size_list(src)
        return nested and safe_cast_ok(src.value_type, dst.value_type)
    return False


def check_version(metadata: dict | None, where: str = "manifest") -> None:
    """ManifestError if the table was written by a newer, incompatible schema version."""
    raw = (metadata or {}).get(VERSION_KEY)
    if raw is None:
        return  # a table from elsewhere (pandas, Spark, ...): its columns decide
    try:
        version = int(raw)
    except ValueError:
        raise ManifestError(f"{where}: unreadable schema version {raw!r}") from None
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: schema version {version} is newer than this batch-inpaint's "
            f"({SCHEMA_VERSION}); upgrade batch-inpaint to read it"
        )


def _rename_hint(names: list[str], wanted) -> str:
    """'; did you mean ...' for the present column most like a wanted one: a typo (`imgae`),
    another case (`Image`) or a suffix (`mask_path`, `image_uri`); '' when none is close."""
    scored = []
    for name in names:
        plain = re.sub(r"[_\-\s]*(path|uri|url|file|filename|name)$", "", name.strip().lower())
        for want in wanted:
            score = max(difflib.SequenceMatcher(None, key, want).ratio()
                        for key in (plain, name.lower()))  # fmt: skip
            scored.append((score, name, want))
    score, name, want = max(scored, default=(0.0, "", ""))
    if score < 0.6:
        return ""
    return f"; did you mean {want!r}? rename column {name!r} to {want!r}"


def conform_manifest(table: pa.Table, where: str = "manifest", needs_mask: bool = True) -> pa.Table:
    """The table with known columns cast to MANIFEST_SCHEMA's types (safe casts only) and the
    schema version in its metadata; ManifestError naming the column when one is missing or of
    a wrong type. Other columns are kept as they are, in their order."""
    check_version(table.schema.metadata, where)
    names = table.column_names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ManifestError(f"{where}: duplicate column names {dup}")
    for name in REQUIRED_COLUMNS:
        if name not in names:
            raise ManifestError(
                f"{where}: required column {name!r} is missing{_rename_hint(names, [name])} "
                f"(columns: {names})"
            )
    # a `detect` column (queries per row) or a job's `detect` setting finds the masks instead
    if needs_mask and not any(n in names for n in (*MASK_COLUMNS, DETECT_COLUMN)):
        raise ManifestError(
            f"{where}: no mask column; give one of {list(MASK_COLUMNS)}"
            f"{_rename_hint(names, MASK_COLUMNS)} (columns: {names}), or queries to detect "
            f"the masks from (--detect 'watermark' or a {DETECT_COLUMN!r} column)"
        )
    arrays, fields = [], []
    for field in table.schema:
        col = table.column(field.name)
        known = MANIFEST_SCHEMA.field(field.name) if field.name in MANIFEST_SCHEMA.names else None
        if known is not None:
            if not col.type.equals(known.type):
                if not safe_cast_ok(col.type, known.type):
                    raise ManifestError(
                        f"{where}: column {field.name!r} has type {col.type}, expected {known.type}"
                    )
                try:
                    col = col.cast(known.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ManifestError(
                        f"{where}: column {field.name!r} can't be converted from {col.type} to "
                        f"{known.type} without loss: {exc}"
                    ) from None
            # nulls in id/image are row problems for validate(), not a reason to refuse the table
            field = known.with_nullable(True)
        arrays.append(col)
        fields.append(field)
    metadata = dict(table.schema.metadata or {})
    metadata.pop(b"pandas", None)  # pandas index bookkeeping: meaningless after conforming
    metadata[VERSION_KEY] = str(SCHEMA_VERSION).encode()
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
