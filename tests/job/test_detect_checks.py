"""Detection's checks before any cluster work (exit status 2) and its place in the formats: a
manifest may give queries instead of masks, and results of runs from before detection still read
(their rows get null detection columns)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_inpaint.errors import ConfigError
from tests.job.test_detect_job import _config, _local


def test_settings_that_cannot_work_stop_before_the_cluster(tmp_path):
    from batch_inpaint.job import plan
    from batch_inpaint.storage.store import Storage

    _local(tmp_path)
    m, o = str(tmp_path / "manifest.parquet"), str(tmp_path / "out")
    cases = {
        "'detector'": dict(detector=str(tmp_path / "no-such-folder")),
        "max_residual": dict(max_residual=0.5),
        "'detector' and 'text_detector'": dict(detector="none", text_detector="none"),
    }
    for words, kw in cases.items():
        cfg = _config(manifest=m, output=o, **kw)
        with pytest.raises(ConfigError, match=words):
            plan.check_run(cfg, Storage(cfg.storage_options()), echo=lambda *_: None)
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"id": ["a"], "image": ["x.png"], "detect": [5]}), bad / "m2.parquet")
    cfg = _config(manifest=str(bad / "m2.parquet"), output=o, detect=[])
    with pytest.raises(ConfigError, match="row 'a'"):
        plan.check_run(cfg, Storage(cfg.storage_options()), echo=lambda *_: None)


def test_a_detect_column_or_job_queries_stand_in_for_a_mask_column():
    from batch_inpaint.errors import ManifestError
    from batch_inpaint.manifest.schema import conform_manifest

    plain = pa.table({"id": ["a"], "image": ["a.png"]})
    with pytest.raises(ManifestError, match="--detect"):
        conform_manifest(plain)
    assert conform_manifest(plain, needs_mask=False).num_rows == 1  # the job's --detect
    assert conform_manifest(plain.append_column("detect", pa.array(["logo"]))).num_rows == 1


def test_results_of_older_runs_without_the_detection_columns_still_read(tmp_path):
    """Metadata parts written before detection lack its columns: read back, they are null."""
    import datetime as dt

    from batch_inpaint.job import results
    from batch_inpaint.manifest.schema import RESULT_SCHEMA
    from batch_inpaint.storage.store import Storage

    new = ("detections", "mask_used", "note", "residual_score")
    now = dt.datetime.now(dt.timezone.utc)
    old = pa.table({"id": ["a"], "status": ["ok"], "output": ["images/a.png"], "finished_at": [now]},
                   schema=pa.schema([RESULT_SCHEMA.field(n) for n in
                                     ("id", "status", "output", "finished_at")]))  # fmt: skip
    mine = RESULT_SCHEMA.empty_table().to_pylist() + [
        {f.name: None for f in RESULT_SCHEMA} | {"id": "b", "status": "skipped",
         "finished_at": now, "note": "nothing found for logo", "detections": []}]  # fmt: skip
    meta = tmp_path / "out" / "metadata"
    meta.mkdir(parents=True)
    (meta / "part-old.parquet").write_bytes(results.table_bytes(old))
    (meta / "part-new.parquet").write_bytes(
        results.table_bytes(pa.Table.from_pylist(mine, RESULT_SCHEMA))
    )
    table, parts = results.read_results(Storage(), str(tmp_path / "out"))
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(parts) == 2 and all(rows["a"][c] is None for c in new)
    assert rows["b"]["note"] == "nothing found for logo" and rows["b"]["detections"] == []


@pytest.mark.parametrize("as_lists", [False, True])
def test_job_queries_are_the_union_of_the_rows_and_the_jobs(tmp_path, as_lists):
    """The driver reads only the detect column's distinct values; rows `batch-inpaint detect`
    already did add nothing; a bad value still names its row."""
    from batch_inpaint.detect.base import detections_arrow_type
    from batch_inpaint.job.detect_stage import job_queries
    from batch_inpaint.storage.store import Storage

    values = [["logo", "text"], None, ["logo"], ["face"]] if as_lists else [
        "logo, text", None, "logo", "face"]  # fmt: skip
    done = [None, None, None, [{"label": "face", "score": 0.9, "box": [0.0, 0.0, 1.0, 1.0]}]]
    table = pa.table({"id": list("abcd"), "image": ["x.png"] * 4, "detect": values,
                      "detections": pa.array(done, detections_arrow_type())})  # fmt: skip
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    cfg = _config(manifest=str(path), output=str(tmp_path / "o"), detect=["watermark"])
    storage = Storage(cfg.storage_options())
    # row b has none of its own: the job's; row d was detected already: its 'face' is not asked
    assert sorted(job_queries(storage, cfg)) == ["logo", "text", "watermark"]
    bad = pa.array([None, [1], None, None]) if as_lists else pa.array([None, 5, None, None])
    pq.write_table(pa.table({"id": list("abcd"), "image": ["x.png"] * 4, "detect": bad}), path)
    with pytest.raises(ConfigError, match="row 'b'"):
        job_queries(storage, cfg)
