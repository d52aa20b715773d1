"""The driver's bookkeeping at scale: ids stay Arrow arrays from the manifest scan to the rows a
run leaves out, and the columnar rules give exactly what the per-row rules gave."""

from __future__ import annotations

import datetime as dt
import random
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver import plan, results
from batch_inpaint.job.driver.finalize import RunState
from batch_inpaint.job.driver.scan import result_ids, scan_manifest
from batch_inpaint.job.pipeline import drop_rows
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import DONE

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _latest_per_row(table: pa.Table) -> pa.Table:
    """The per-row rule latest_per_id replaced: last finished wins, ok beats error, ties: later."""
    best: dict[str, int] = {}
    rows = table.to_pylist()
    for i, r in enumerate(rows):
        j = best.get(r["id"])
        key = (r["status"] in DONE, (r["finished_at"] or T0).timestamp() if r["finished_at"] else 0)
        if j is None:
            best[r["id"]] = i
            continue
        other = rows[j]
        ts = other["finished_at"].timestamp() if other["finished_at"] else 0
        if key >= (other["status"] in DONE, ts):
            best[r["id"]] = i
    return table.take(sorted(best.values()))


def test_latest_per_id_is_the_per_row_rule():
    rng = random.Random(7)
    for _ in range(20):
        n = rng.randint(1, 60)
        stamps = [None, *(T0 + dt.timedelta(seconds=s) for s in range(4))]
        table = pa.table({
            "id": [f"r{rng.randint(0, 15)}" for _ in range(n)],
            "status": [rng.choice(["ok", "error", "skipped"]) for _ in range(n)],
            "finished_at": pa.array([rng.choice(stamps) for _ in range(n)],
                                    pa.timestamp("us", tz="UTC")),
            "row": list(range(n)),
        })  # fmt: skip
        assert results.latest_per_id(table).to_pylist() == _latest_per_row(table).to_pylist()


def test_result_ids_of_an_arrow_column_match_the_list_rule():
    ids = ["a", "b", "a", None, "", "a", "c", "b"]
    expected = ["a", "b", "a#2", "#row-3", "#row-4", "a#3", "c", "b#2"]
    assert result_ids(ids) == expected
    assert result_ids(pa.array(ids, pa.string())).to_pylist() == expected


def _output(tmp_path: Path, n: int, done: int, dup: bool = True) -> tuple[JobConfig, Path]:
    """A manifest of n rows (one id twice and one row without an id when `dup`) and an output
    whose results say the first `done` rows finished: ok with their image, an error of bad
    input, a transient error (redone), or ok with the image gone (redone), in turn."""
    ids = [f"r{i:07d}" for i in range(n)]
    if dup:
        ids[1], ids[2] = ids[0], None
    manifest = tmp_path / "manifest.parquet"
    images = [f"in/{i}.png" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "image": images, "mask": images}), manifest)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    rows = []
    for i in range(done):
        kind = i % 4
        rid = f"r{i:07d}"
        if kind in (0, 3):
            rows.append({"id": rid, "status": "ok", "output": f"images/{rid}.png",
                         "error_kind": None})  # fmt: skip
            if kind == 0:
                (out / "images" / f"{rid}.png").write_bytes(b"x")
        else:
            rows.append({"id": rid, "status": "error", "output": None,
                         "error_kind": "decode" if kind == 1 else "storage_transient"})  # fmt: skip
    (out / "metadata").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), out / "metadata" / "results-a.parquet")
    return JobConfig(manifest=str(manifest), output=str(out), backend="opencv"), out


def _decide(cfg: JobConfig) -> plan.Decision:
    storage = Storage()
    run = RunState(cfg, storage, scan_manifest(storage, cfg), "run-b", time.time())
    return plan.decide(run)


def test_resume_leaves_out_done_rows_and_duplicates_and_keeps_the_rest(tmp_path):
    cfg, _ = _output(tmp_path, 40, 20)
    decision = _decide(cfg)
    left_out = set(decision.exclude.to_pylist())
    # r0000000 is used twice (duplicate, left out); row 2 has no id (never processed)
    done = {f"r{i:07d}" for i in range(20) if i % 4 in (0, 1)}  # r0000001: not in the manifest
    assert left_out == done
    # in the manifest: r0000000 (in two rows, counted once), r0000004, 5, 8, 9, 12, 13, 16, 17
    assert decision.done == 9
    assert decision.todo == 40 - 3 - 8  # less 3 rows of bad ids and 8 rows done
    retry = _decide(JobConfig(**{**cfg.to_dict(), "retry_errors": True}))
    assert set(retry.exclude.to_pylist()) == {f"r{i:07d}" for i in range(0, 20, 4)}
    fresh = _decide(JobConfig(**{**cfg.to_dict(), "resume": False}))
    assert fresh.exclude.to_pylist() == ["r0000000"] and fresh.done == 0


def test_drop_rows_filters_a_block_by_an_arrow_id_set():
    block = pa.table({"id": ["a", "b", None, "", "c", "d"], "x": list(range(6))})
    assert drop_rows(block, pa.array(["b", "d", "zz"])).column("x").to_pylist() == [0, 4]
    many = pa.array([f"n{i}" for i in range(100)] + ["c"])  # larger than the block: probed
    assert drop_rows(block, many).column("id").to_pylist() == ["a", "b", "d"]
    assert drop_rows(block, frozenset({"a"})).column("id").to_pylist() == ["b", "c", "d"]


def test_planning_makes_no_python_object_per_row(tmp_path):
    """50,000 rows, half finished: planning a resume allocates well under the ~10 MB that one
    Python string per id (a list, a set of done ids) took; Arrow's buffers are not counted."""
    cfg, _ = _output(tmp_path, 50_000, 25_000, dup=False)
    storage = Storage()
    tracemalloc.start()
    try:
        run = RunState(cfg, storage, scan_manifest(storage, cfg), "run-b", time.time())
        decision = plan.decide(run)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decision.todo == 50_000 - 12_500 and decision.done == 12_500
    assert pc.sum(pc.is_in(run.scan.ids, value_set=decision.exclude)).as_py() == 12_500
    assert peak < 4_000_000, f"planning made {peak / 1e6:.1f} MB of Python objects"
