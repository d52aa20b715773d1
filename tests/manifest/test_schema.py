"""schema.py: one Arrow schema, safe casts only, errors that name the column."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batch_inpaint.errors import ManifestError
from batch_inpaint.manifest.schema import (
    MANIFEST_SCHEMA,
    OVERRIDE_COLUMNS,
    RESULT_SCHEMA,
    SCHEMA_VERSION,
    VERSION_KEY,
    conform_manifest,
)
from batch_inpaint.vocab import FINAL


def _table(**cols):
    base = {"id": pa.array(["a", "b"]), "image": pa.array(["x.png", "y.png"])}
    base["mask"] = pa.array(["m1.png", "m2.png"])
    base.update(cols)
    return pa.table({k: v for k, v in base.items() if v is not None})


def test_safe_casts_are_accepted():
    t = conform_manifest(
        _table(
            id=pa.array(["a", "b"], pa.large_string()),
            seed=pa.array([1, 2], pa.int32()),
            num_inference_steps=pa.array([10, None], pa.uint8()),
            guidance_scale=pa.array([7, 8], pa.int64()),
            strength=pa.array([0.5, 1.0], pa.float32()),
            prompt=pa.array(["p", "q"]).dictionary_encode(),
            mask_boxes=pa.array([[[0, 0, 4, 4]], None], pa.list_(pa.list_(pa.int32()))),
            negative_prompt=pa.nulls(2),
        )
    )
    for name in t.column_names:
        assert t.schema.field(name).type == MANIFEST_SCHEMA.field(name).type, name
    assert t.column("seed").to_pylist() == [1, 2]
    assert t.column("mask_boxes").to_pylist() == [[[0.0, 0.0, 4.0, 4.0]], None]
    assert t.schema.metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()


@pytest.mark.parametrize(
    "column, array",
    [
        ("seed", pa.array(["1", "2"])),
        ("image", pa.array([1, 2])),
        ("mask_from_alpha", pa.array([1, 0])),
        ("guidance_scale", pa.array(["7.5", "1"])),
        ("mask_boxes", pa.array(["[0,0,1,1]", None])),
        ("id", pa.array([1, 2])),
    ],
)
def test_wrong_type_names_the_column(column, array):
    with pytest.raises(ManifestError, match=f"column '{column}' has type"):
        conform_manifest(_table(**{column: array}))


def test_whole_floats_become_ints_but_fractions_are_refused():
    t = conform_manifest(_table(seed=pa.array([1.0, None])))  # pandas: ints with a gap
    assert t.column("seed").to_pylist() == [1, None]
    with pytest.raises(ManifestError, match="'seed'.*without loss"):
        conform_manifest(_table(seed=pa.array([1.5, 2.0])))


def test_lossy_cast_is_refused():
    with pytest.raises(ManifestError, match="'seed'"):
        conform_manifest(_table(seed=pa.array([2**64 - 1, 0], pa.uint64())))


@pytest.mark.parametrize("missing", ["id", "image"])
def test_missing_required_column(missing):
    with pytest.raises(ManifestError, match=f"required column '{missing}' is missing"):
        conform_manifest(_table(**{missing: None}))


def test_no_mask_column_and_duplicate_names():
    with pytest.raises(ManifestError, match="no mask column"):
        conform_manifest(_table(mask=None))
    t = pa.Table.from_arrays(
        [pa.array(["a"]), pa.array(["x"]), pa.array(["y"])], ["id", "image", "image"]
    )
    with pytest.raises(ManifestError, match="duplicate column"):
        conform_manifest(t)


def test_other_columns_carried_through_unchanged():
    extra = pa.array([{"k": 1}, {"k": 2}])
    t = conform_manifest(_table(caption=pa.array(["c1", "c2"], pa.large_string()), meta=extra))
    assert t.schema.field("caption").type == pa.large_string()  # not ours: untouched
    assert t.column("meta").to_pylist() == [{"k": 1}, {"k": 2}]
    assert t.column_names == ["id", "image", "mask", "caption", "meta"]


def test_newer_schema_version_is_refused():
    t = _table().replace_schema_metadata({VERSION_KEY: str(SCHEMA_VERSION + 1).encode()})
    with pytest.raises(ManifestError, match="newer"):
        conform_manifest(t)


def test_result_schema_and_status():
    expected = [
        "id", "status", "error_kind", "error", "output", "sha256", "width", "height", "seed",
        "model", "revision", "backend", "params", "prepare_s", "model_s", "write_s",
        "finished_at", "detections", "mask_used", "note", "residual_score", "detect_s",
        "verify_s",
    ]  # fmt: skip
    assert RESULT_SCHEMA.names == expected
    assert RESULT_SCHEMA.field("finished_at").type == pa.timestamp("ms", tz="UTC")
    assert set(FINAL) == {"ok", "error", "skipped"}  # the statuses a result row may have
    assert RESULT_SCHEMA.metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()


def test_override_columns_come_from_the_generation_fields():
    """The per-row columns are derived from GenerationParams' row=True fields; their names and
    Arrow types are part of the manifest format and stay as they are."""
    assert sorted(OVERRIDE_COLUMNS) == sorted(
        ["prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "strength"]
    )
    types = {c: MANIFEST_SCHEMA.field(c).type for c in OVERRIDE_COLUMNS}
    assert types == {
        "prompt": pa.string(),
        "negative_prompt": pa.string(),
        "seed": pa.int64(),
        "num_inference_steps": pa.int64(),
        "guidance_scale": pa.float64(),
        "strength": pa.float64(),
    }
    assert all(MANIFEST_SCHEMA.field(c).nullable for c in OVERRIDE_COLUMNS)
