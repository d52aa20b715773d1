"""The stages' shared pieces: StageClock (job/stages/timing.py), how every stage times its rows,
and map_rows (job/stages/workitem.py), the row-by-row pivot."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from batch_inpaint.job.stages.timing import StageClock
from batch_inpaint.job.stages.workitem import map_rows


def test_a_row_gets_its_own_time_plus_its_share_of_batch_work():
    clock = StageClock("t", 4)
    with clock.row(0):
        time.sleep(0.02)
    with clock.share([0, 1]):
        time.sleep(0.04)
    s = clock.seconds
    assert s[0] == pytest.approx(0.04, abs=0.015)  # 0.02 alone + half of 0.04
    assert s[1] == pytest.approx(0.02, abs=0.01)
    assert s[2] is None and s[3] is None  # never worked on: null
    arr = clock.array()
    assert arr.type == pa.float64() and arr.null_count == 2


def test_idle_rows_keep_the_idle_value_and_no_rows_share_nothing():
    clock = StageClock("t", 3, idle=0.0)
    with clock.share([]):  # nobody's time (the model stage with no pending row)
        time.sleep(0.01)
    with clock.share(iter([2])):  # any iterable of positions
        pass
    assert clock.seconds[:2] == [0.0, 0.0] and clock.seconds[2] >= 0.0


def test_a_row_that_raises_still_counts_its_time():
    clock = StageClock("t", 1)
    with pytest.raises(ValueError), clock.row(0):
        time.sleep(0.01)
        raise ValueError("bad row")
    assert clock.seconds[0] >= 0.009


def test_map_rows_pivots_rows_into_typed_columns():
    table = pa.table({"id": ["a", "b", "c"], "n": [1, 2, 3], "other": [b"x", b"y", b"z"]})
    seen = []

    def one(i: int, row: dict) -> dict:
        seen.append((i, sorted(row)))
        if row["n"] == 2:
            return {"label": "two"}  # double left out: null
        return {"label": f"row {row['id']}", "double": row["n"] * 2, "ignored": 1}

    schema = pa.schema([("label", pa.string()), ("double", pa.int32())])
    out = map_rows(table, one, schema, reads=["id", "n", "absent", "n"])
    assert seen == [(0, ["id", "n"]), (1, ["id", "n"]), (2, ["id", "n"])]  # only what it reads
    assert list(out) == ["label", "double"]
    assert out["label"].to_pylist() == ["row a", "two", "row c"]
    assert out["double"].type == pa.int32() and out["double"].to_pylist() == [2, None, 6]
    # nothing read: still one call a row, each with an empty row
    none = map_rows(table, lambda i, row: {"label": f"{i}{row}"}, schema, reads=["absent"])
    assert none["label"].to_pylist() == ["0{}", "1{}", "2{}"]


def test_map_rows_with_a_clock_times_each_row_into_its_column():
    table = pa.table({"id": ["slow", "fast"]})

    def one(_: int, row: dict) -> dict:
        time.sleep(0.03 if row["id"] == "slow" else 0.0)
        return {"id2": row["id"], "t": 123.0}  # the clock's value wins over fn's

    schema = pa.schema([("id2", pa.string()), ("t", pa.float64())])
    clock = StageClock("t", table.num_rows)
    out = map_rows(table, one, schema, clock=clock)
    slow, fast = out["t"].to_pylist()
    assert slow >= 0.025 and fast < slow and out["id2"].to_pylist() == ["slow", "fast"]
    assert map_rows(table.slice(0, 0), one, schema, clock=StageClock("t", 0))["t"].to_pylist() == []


def test_each_stage_fills_its_seconds_by_the_same_rule(tmp_path):
    """prepare and finish: every row its own seconds; model: the pending rows share the passes,
    skipped and error rows 0.0 (a row the model failed on alone still had its share)."""
    from batch_inpaint.job.stages import workitem as wi
    from batch_inpaint.job.stages.finish import finish_batch
    from batch_inpaint.job.stages.model import ModelStage
    from batch_inpaint.job.stages.prepare import prepare_batch
    from tests.fixtures_ray import box_mask, png, sample_image
    from tests.job.helpers import FailingOn, context, table_of

    rows = []
    for rid, box, prompt in (("ok", (4, 4, 20, 20), None), ("empty", (0, 0, 0, 0), None),
                             ("fails", (4, 4, 20, 20), "fail here")):  # fmt: skip
        (tmp_path / f"{rid}.png").write_bytes(png(sample_image(32, 32, len(rows))))
        (tmp_path / f"{rid}-m.png").write_bytes(png(box_mask(32, 32, box)))
        rows.append({"id": rid, "image": f"{rid}.png", "mask": f"{rid}-m.png", "prompt": prompt})
    rows.append({"id": "missing", "image": "nope.png", "mask": "ok-m.png", "prompt": None})
    ctx = context(tmp_path)
    prepared = prepare_batch(table_of(rows), ctx)
    assert all(s > 0 for s in prepared.column(wi.T_PREPARE).to_pylist())
    modelled = ModelStage(ctx, inpainter=FailingOn("fail here"))(prepared)
    ids = [r["id"] for r in rows]
    model_s = dict(zip(ids, modelled.column(wi.T_MODEL).to_pylist(), strict=True))
    assert model_s["ok"] > 0 and model_s["fails"] == model_s["ok"]  # an even share
    assert model_s["empty"] == 0.0 and model_s["missing"] == 0.0
    finished = {r["id"]: r for r in finish_batch(modelled, ctx).to_pylist()}
    assert [finished[r]["status"] for r in ("ok", "empty", "fails", "missing")] == [
        "ok", "skipped", "error", "error"]  # fmt: skip
    assert all(r["write_s"] > 0 and r["prepare_s"] > 0 for r in finished.values())
    assert finished["ok"]["model_s"] == model_s["ok"] and finished["ok"]["detect_s"] is None
