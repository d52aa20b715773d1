"""Result ids of rows that can't be processed (an id used twice, or none) never take a real
row's id: a manifest whose ids look like generated ones ('x#2', '#row-4') keeps one result row
per manifest row, and a rerun of it is complete."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver.scan import result_ids, scan_manifest
from batch_inpaint.manifest.validation import validate_table
from batch_inpaint.storage.store import Storage
from tests.fixtures_ray import local_dataset, manifest_bytes

IDS = ["x", "x", "x#2", "#row-4", None, "y"]


def test_generated_ids_step_around_real_ids():
    assert result_ids(IDS) == ["x", "x#2#", "x#2", "#row-4", "#row-4#", "y"]
    assert result_ids(pa.array(IDS, pa.string())).to_pylist() == result_ids(IDS)


@pytest.mark.parametrize(
    "ids",
    [
        ["a", "a", "a#2", "a#2", None, "#row-4", "#row-4#", "#row-4"],
        ["#row-1", None, "#row-1#", "#row-1##", "b", "b", "b#2", "b#2#", "b#2##", ""],
        ["a#2", "a", "a", "a", "a#3#", "a#3"],
    ],
)
def test_result_ids_are_unique_keep_every_good_id_and_are_stable(ids):
    got = result_ids(ids)
    assert len(set(got)) == len(ids)
    counts = {i: ids.count(i) for i in ids}
    for i, r in zip(ids, got, strict=True):
        if i and counts[i] == 1:
            assert r == i  # a good row's result id is its id
    assert result_ids(ids) == got == result_ids(pa.array(ids, pa.string())).to_pylist()


def test_scan_names_error_rows_by_their_cause_and_says_when_an_id_was_taken(tmp_path):
    rows = [{"id": i, "image": f"images/{n}.png", "mask": "m.png"} for n, i in enumerate(IDS)]
    rows += [{"id": "#row-9", "image": "images/a.png", "mask": "m.png"}] * 2
    (tmp_path / "m.parquet").write_bytes(manifest_bytes(rows))
    cfg = JobConfig(manifest=str(tmp_path / "m.parquet"), output=str(tmp_path / "out"))
    scan = scan_manifest(Storage(), cfg)
    bad = {r["id"]: r for r in scan.bad_rows.to_pylist()}
    assert sorted(bad) == ["#row-4#", "#row-9", "#row-9#2", "x", "x#2#"]
    assert bad["#row-4#"]["error_kind"] == "missing_id"
    assert "'#row-4' is another row's id" in bad["#row-4#"]["error"]
    assert "'x#2' is another row's id" in bad["x#2#"]["error"]
    # a duplicated id that merely looks like a generated one is a duplicate, not a missing id
    assert bad["#row-9"]["error_kind"] == bad["#row-9#2"]["error_kind"] == "duplicate_id"


def test_validate_reports_the_rows_whose_usual_result_id_is_taken(tmp_path):
    table = pa.table({"id": IDS, "image": [f"i{n}.png" for n in range(6)], "mask": ["m.png"] * 6})
    report = validate_table(table, Storage(), check_objects=False)
    by_kind = {(p.kind, p.row_id): p.message for p in report}
    assert "'x#2#' ('x#2' is another row's id)" in by_kind[("duplicate_id", "x")]
    assert (
        "row 4: id is null or empty; its error row's result id is '#row-4#'"
        in (by_kind[("missing_id", None)])
    )


@pytest.mark.slow
def test_a_manifest_with_ids_like_generated_ones_runs_complete_and_reruns_complete(
    ray_local, tmp_path
):
    from batch_inpaint.job.run import run_job

    manifest, rows = local_dataset(tmp_path / "data", 10)
    for row, rid in zip(rows, IDS, strict=False):
        row["id"] = rid
    manifest.write_bytes(manifest_bytes(rows))
    out = tmp_path / "out"
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv", device="cpu")
    first = run_job(cfg, echo=lambda *_: None)
    meta = {r["id"]: r for r in pq.read_table(out / "metadata").to_pylist()}
    assert len(meta) == 10 and first["success"], first["problems"]
    assert {i: meta[i]["status"] for i in ("x#2", "#row-4", "y")} == dict.fromkeys(
        ("x#2", "#row-4", "y"), "ok"
    )
    assert meta["x#2#"]["error_kind"] == "duplicate_id"
    assert meta["#row-4#"]["error_kind"] == "missing_id"
    again = run_job(cfg, echo=lambda *_: None)
    assert again["success"] and again["rows_this_run"] == 0, again["problems"]
