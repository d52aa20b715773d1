"""The job's three stages in process, without Ray: prepare -> model (an injected OpenCV model) ->
finish over Arrow tables built here. Every kind of bad row becomes an error row of the right kind
whose message names the row; the good rows finish; pass-through columns survive; each stage's
output carries its declared columns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from batch_inpaint.errors import InpaintError
from batch_inpaint.job.stages import workitem as wi
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.manifest.schema import RESULT_SCHEMA
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.vocab import ErrorKind, Status
from tests.fixtures_ray import box_mask, png, sample_image
from tests.job.helpers import FailingOn, context, table_of

# id -> (status, error_kind, words the message must hold besides the row's id)
EXPECTED = {
    "ok-file": ("ok", None, ()),
    "ok-boxes": ("ok", None, ()),
    "ok-2": ("ok", None, ()),
    "empty-mask": ("skipped", None, ()),
    "corrupt": ("error", ErrorKind.DECODE, ("images/corrupt.png",)),
    "missing": ("error", ErrorKind.NOT_FOUND, ("images/nope.png",)),
    "size-mismatch": ("error", ErrorKind.SIZE_MISMATCH, ("32x32", "64x48")),
    "metadata-url": ("error", ErrorKind.URI_REJECTED, ("169.254.169.254",)),
    "no-image": ("error", ErrorKind.MISSING_IMAGE, ("no image",)),
    "no-mask": ("error", ErrorKind.NO_MASK, ("no mask",)),
    "zero-steps": ("error", ErrorKind.BAD_VALUE, ("num_inference_steps",)),
    "model-fails": ("error", ErrorKind.MODEL, ("model failed on this image", "blew up")),
}


def _put(root: Path, key: str, data: bytes) -> str:
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_bytes(data)
    return key


def _rows(root: Path) -> list[dict]:
    def image(rid, w=64, h=48, seed=0, box=(10, 8, 30, 28), mask_size=None, **extra):
        row = {"id": rid, "image": _put(root, f"images/{rid}.png", png(sample_image(w, h, seed)))}
        if box is not None:
            mw, mh = mask_size or (w, h)
            row["mask"] = _put(root, f"masks/{rid}.png", png(box_mask(mw, mh, box)))
        return {**row, "caption": f"about {rid}", **extra}

    return [
        image("ok-file", seed=1),
        image("ok-boxes", 96, 64, 2, box=None, mask_boxes=[[40.0, 10.0, 70.0, 40.0]]),
        image("ok-2", seed=3, prompt="a wall"),
        image("empty-mask", seed=4, box=(0, 0, 0, 0)),
        {"id": "corrupt", "image": _put(root, "images/corrupt.png", b"\x89PNG\r\n\x1a\n not"),
         "mask_boxes": [[1.0, 1.0, 5.0, 5.0]], "caption": "about corrupt"},
        {"id": "missing", "image": "images/nope.png", "mask_boxes": [[1.0, 1.0, 5.0, 5.0]],
         "caption": "about missing"},
        image("size-mismatch", seed=5, box=(2, 2, 10, 10), mask_size=(32, 32)),
        {"id": "metadata-url", "image": "http://169.254.169.254/x.png",
         "mask_boxes": [[1.0, 1.0, 5.0, 5.0]], "caption": "about metadata-url"},
        {"id": "no-image", "image": None, "mask_boxes": [[1.0, 1.0, 5.0, 5.0]],
         "caption": "about no-image"},
        image("no-mask", seed=6, box=None),
        image("zero-steps", seed=7, num_inference_steps=0),
        image("model-fails", seed=8, prompt="fail here"),
    ]  # fmt: skip


def _declared(table: pa.Table, declared: wi.Declared) -> None:
    """The stage's output has exactly the declared internal columns, with their types."""
    internal = {n for n in table.column_names if n.startswith(wi.P)}
    assert internal == {f.name for f in declared.schema if f.name.startswith(wi.P)}
    for f in declared.schema:
        assert table.schema.field(f.name).type.equals(f.type), f.name


@pytest.fixture
def run(tmp_path):
    rows = _rows(tmp_path)
    ctx = context(tmp_path, batch_size=8, dilate=2, feather=2)
    model = FailingOn("fail here")
    prepared = prepare_batch(table_of(rows), ctx)
    modelled = ModelStage(ctx, inpainter=model)(prepared)
    finished = finish_batch(modelled, ctx)
    return rows, ctx, model, prepared, modelled, finished


def test_every_row_gets_its_outcome_and_errors_name_the_row(run, tmp_path):
    rows, _, model, _, _, finished = run
    got = {r["id"]: r for r in finished.to_pylist()}
    assert list(got) == [r["id"] for r in rows]  # one result row per input row, in order
    for rid, (status, kind, words) in EXPECTED.items():
        r = got[rid]
        assert (r["status"], r["error_kind"]) == (status, kind and kind.value), (rid, r["error"])
        if status == "error":
            assert r["error"].startswith(f"row {rid!r}: "), r["error"]
            for w in words:
                assert w in r["error"], (rid, w, r["error"])
            assert r["output"] is None and r["sha256"] is None
        else:
            assert r["error"] is None and r["output"] == f"images/{rid}.png"  # relative
            assert (tmp_path / "out" / r["output"]).is_file()
    assert model.calls > 1  # the failing batch was split, so the other rows still ran


def test_outputs_change_only_the_masked_pixels(run, tmp_path):
    rows, _, _, _, _, finished = run
    got = {r["id"]: r for r in finished.to_pylist()}
    for rid in ("ok-file", "ok-2", "empty-mask"):
        src = np.asarray(Image.open(tmp_path / f"images/{rid}.png").convert("RGB"))
        mask = np.asarray(Image.open(tmp_path / f"masks/{rid}.png")) > 0
        out = np.asarray(
            Image.open(io.BytesIO((tmp_path / "out" / got[rid]["output"]).read_bytes()))
        )
        assert out.shape == src.shape
        near = np.zeros_like(mask)  # dilate 2 + feather 2: a 5 px margin covers both
        ys, xs = np.nonzero(mask)
        if len(ys):
            near[max(ys.min() - 5, 0) : ys.max() + 6, max(xs.min() - 5, 0) : xs.max() + 6] = True
        same = (out == src).all(axis=-1)
        assert same[~near].all(), rid
        assert rid == "empty-mask" or not same[mask].all(), rid


def test_pass_through_columns_and_result_types(run):
    rows, _, _, _, _, finished = run
    by_id = {r["id"]: r for r in finished.to_pylist()}
    for row in rows:
        for col in ("caption", "image", "prompt"):
            assert by_id[row["id"]][col] == row.get(col), (row["id"], col)
    for f in RESULT_SCHEMA:
        assert finished.schema.field(f.name).type.equals(f.type), f.name
    assert not [c for c in finished.column_names if c.startswith(wi.P)]
    ok = by_id["ok-2"]
    assert ok["backend"] == "opencv" and (ok["width"], ok["height"]) == (64, 48)
    assert json.loads(ok["params"])["prompt"] == "a wall"  # the row's override, as JSON text
    assert json.loads(by_id["ok-file"]["params"])["prompt"] == "background"


def test_each_stage_output_conforms_to_its_declared_schema(run):
    _, _, _, prepared, modelled, finished = run
    _declared(prepared, wi.PREPARED)
    _declared(modelled, wi.MODELLED)
    wi.FINISHED.check(finished)
    regions = prepared.column(wi.REGIONS).to_pylist()
    status = prepared.column(wi.STATUS).to_pylist()
    for s, regs in zip(status, regions, strict=True):
        if s == Status.PENDING.value:  # named fields, not positions
            assert regs and set(regs[0]) == {"x0", "y0", "x1", "y1", "work_w", "work_h"}
    params = prepared.column(wi.PARAMS).type
    assert pa.types.is_struct(params) and params.get_field_index("num_inference_steps") >= 0


def test_a_stage_that_drifts_from_its_schema_fails_loudly(run):
    _, _, _, prepared, _, _ = run
    wrong = prepared.set_column(
        prepared.schema.get_field_index(wi.SEED), wi.SEED,
        pa.array([str(v) for v in prepared.column(wi.SEED).to_pylist()]),
    )  # fmt: skip
    with pytest.raises(InpaintError, match=r"_bi_seed.*declared int64") as err:
        wi.PREPARED.check(wrong)
    assert err.value.kind == "internal"
    with pytest.raises(InpaintError, match="_bi_crops.*missing"):
        wi.MODEL_INPUT.check(prepared.drop_columns([wi.CROPS]))


def test_same_seed_same_pixels_and_factory_injection(tmp_path):
    """A factory builds the model (as each Ray actor does); results don't depend on the batch."""
    rows = [r for r in _rows(tmp_path) if r["id"] in ("ok-file", "ok-2", "ok-boxes")]
    ctx = context(tmp_path)
    alone = ModelStage(ctx, inpainter_factory=lambda c: OpenCVInpainter())
    one = finish_batch(alone(prepare_batch(table_of(rows[:1]), ctx)), ctx)
    out = tmp_path / "out"
    first = (out / one.column("output")[0].as_py()).read_bytes()
    three = finish_batch(alone(prepare_batch(table_of(rows), ctx)), ctx)
    assert (out / three.column("output")[0].as_py()).read_bytes() == first
    assert three.column("status").to_pylist() == ["ok"] * 3


def test_a_model_that_does_not_match_the_spec_is_refused(tmp_path):
    from batch_inpaint.models.spec import model_spec

    ctx = context(tmp_path)
    ctx.spec = model_spec("tiny")  # plans 64 px, multiples of 8: not what OpenCV is
    with pytest.raises(InpaintError):
        ModelStage(ctx, inpainter=OpenCVInpainter())


def test_job_seed_and_row_seed(tmp_path):
    from batch_inpaint.job.stages.prepare import row_seed

    assert row_seed({"id": "a", "seed": 5}, 7) == 5
    assert row_seed({"id": "a"}, 7) != row_seed({"id": "a"}, None) == row_seed({"id": "a"}, None)
