"""The job over Parquet shards with the local executor, on local files: every row once, the
output shards re-packed from the inputs (read back with `datasets`), resume by shard, a
transient error redone by rewriting only its shard, and the output contract (guard, formats)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.job.run import run_job
from batch_inpaint.storage.uri import output_key
from tests.job.io.shard_data import check_parquet_output, write_hf_shards


def _cfg(src, out, **kw) -> JobConfig:
    return JobConfig(manifest=str(src), output=str(out), backend="opencv", executor="local",
                     **kw)  # fmt: skip


def test_parquet_shards_in_and_out_every_row_once(tmp_path):
    shards = write_hf_shards(tmp_path / "in", 3, 4, {1: {"bad": 2, "empty": 0}})
    out = tmp_path / "out"
    summary = run_job(_cfg(tmp_path / "in", out), echo=lambda *_: None)
    assert summary["success"] and summary["counts"] == {"ok": 10, "error": 1, "skipped": 1}
    assert sorted(p.name for p in (out / "data").iterdir()) == [p.name for p in shards]
    assert not (out / "images").exists()  # no object per row
    by_id = check_parquet_output(shards, out)
    assert len(by_id) == 12
    bad = by_id["train-00001.parquet:2"]
    assert bad["status"] == "error" and bad["error_kind"] == "decode"
    assert "shard train-00001.parquet row 2" in bad["error"]  # names the row and its cause
    assert by_id["train-00001.parquet:0"]["status"] == "skipped"
    assert by_id["train-00000.parquet:1"]["caption"] == "a photo, shard 0 row 1"  # carried
    assert "image_bytes" not in pq.read_schema(next((out / "metadata").iterdir()))
    page = (out / "report.html").read_text()
    assert 'alt="input"' in page and 'alt="output"' in page  # pictures from the shards

    again = run_job(_cfg(tmp_path / "in", out), echo=lambda *_: None)  # nothing left to do
    assert again["success"] and again["rows_this_run"] == 0


def test_resume_redoes_a_missing_shard_and_retry_rewrites_only_its_shard(tmp_path):
    shards = write_hf_shards(tmp_path / "in", 3, 3)
    out = tmp_path / "out"
    run_job(_cfg(tmp_path / "in", out), echo=lambda *_: None)
    data = out / "data"
    (data / shards[2].name).unlink()  # killed between its rows' results and its write
    mtimes = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    summary = run_job(_cfg(tmp_path / "in", out), echo=lambda *_: None)
    assert summary["success"] and summary["rows_this_run"] == 3  # that shard's rows only
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir() if p.name in mtimes} == mtimes
    check_parquet_output(shards, out)

    # a transient error in shard 1 (as a storage failure leaves it): that shard alone is redone
    meta = pq.read_table(out / "metadata")
    rows = meta.to_pylist()
    for r in rows:
        if r["id"] == "train-00001.parquet:1":
            r.update(status="error", error_kind="storage_transient", error="timed out", output=None)
    for p in (out / "metadata").iterdir():
        p.unlink()
    pq.write_table(pa.Table.from_pylist(rows, meta.schema), out / "metadata" / "part-x.parquet")
    os.utime(data / shards[1].name, ns=(1, 1))  # a shard holding it, written "long ago"
    mtimes = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    summary = run_job(_cfg(tmp_path / "in", out), echo=lambda *_: None)
    assert summary["success"] and summary["rows_this_run"] == 1
    after = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    assert after[shards[1].name] != 1  # rewritten ...
    assert {k: v for k, v in after.items() if k != shards[1].name} == {
        k: v for k, v in mtimes.items() if k != shards[1].name}  # ... and no other  # fmt: skip
    by_id = check_parquet_output(shards, out)  # its other rows kept their inpainted images
    assert by_id["train-00001.parquet:1"]["status"] == "ok"


def test_output_formats_and_the_guard(tmp_path):
    shards = write_hf_shards(tmp_path / "in", 1, 2)
    with pytest.raises(ConfigError, match="output_format': webdataset needs webdataset input"):
        run_job(_cfg(tmp_path / "in", tmp_path / "o1", output_format="webdataset"))
    with pytest.raises(ConfigError, match="no column 'picture' .*name the image column"):
        run_job(_cfg(tmp_path / "in", tmp_path / "o1", image_column="picture"))
    with pytest.raises(ConfigError, match="lies inside .*which the manifest reads"):
        run_job(_cfg(tmp_path / "in", tmp_path / "in" / "out"))
    with pytest.raises(ConfigError, match="contains"):
        run_job(_cfg(shards[0], tmp_path))
    files = run_job(_cfg(tmp_path / "in", tmp_path / "o2", output_format="jpeg"),
                    echo=lambda *_: None)  # fmt: skip
    assert files["success"]  # the old meaning: one file a row, in that encoding
    names = sorted(p.name for p in (tmp_path / "o2" / "images").iterdir())
    assert names == [output_key(f"train-00000.parquet:{i}", ".jpg") for i in (0, 1)]
    assert JobConfig(output_format="webp").output_format == "files"
    assert JobConfig(output_format="webp").image_format == "webp"


def test_prune_drops_the_shards_that_left_and_finalize_removes_its_own_strays(tmp_path):
    shards = write_hf_shards(tmp_path / "in", 2, 2)
    out = tmp_path / "out"
    run_job(_cfg(tmp_path / "in", out), echo=lambda *_: None)
    stray = out / "data" / ".train-00007.parquet.0123456789ab.tmp"  # a write cut short
    stray.write_bytes(b"half")
    kept = run_job(_cfg(shards[0], out), echo=lambda *_: None)  # one shard now, no prune
    assert kept["rows_of_other_manifests_kept"] == 2 and kept["orphans_removed"] == 1
    assert sorted(p.name for p in (out / "data").iterdir()) == [p.name for p in shards]
    pruned = run_job(_cfg(shards[0], out, prune=True), echo=lambda *_: None)
    assert pruned["success"] and pruned["rows_pruned"] == 2  # one shard: its two rows
    assert [p.name for p in (out / "data").iterdir()] == [shards[0].name]
    assert {r["shard"] for r in pq.read_table(out / "metadata").to_pylist()} == {shards[0].name}


def test_dry_run_over_shards_plans_from_the_shards_and_writes_nothing(tmp_path):
    from batch_inpaint.job.driver.estimate import plan_job

    write_hf_shards(tmp_path / "in", 3, 3, {2: {"bad": 0}})
    plan = plan_job(_cfg(tmp_path / "in", tmp_path / "out"), sample=9)
    assert plan["rows"] == {"manifest": 9, "done": 0, "bad_ids": 0, "to_do": 9}
    assert plan["plan"]["sampled"] == 9 and plan["plan"]["errors_by_kind"] == {"decode": 1}
    assert plan["settings"]["output_format"] == "parquet shards, png"
    assert plan["validation"]["rows_checked"] > 0
    assert not (tmp_path / "out").exists()


def test_a_shard_with_no_ok_row_is_still_written_whole(tmp_path):
    """Every row of shard 1 is an error or skipped: no result row names it as an output, yet
    it is written (the input's bytes) and finalize keeps it (no orphan)."""
    shards = write_hf_shards(tmp_path / "in", 2, 2, {1: {"bad": 0, "empty": 1}})
    out = tmp_path / "out"
    summary = run_job(_cfg(tmp_path / "in", out), echo=lambda *_: None)
    assert summary["counts"] == {"ok": 2, "error": 1, "skipped": 1}
    assert summary["orphans_removed"] == 0
    assert (out / "data" / shards[1].name).read_bytes() == shards[1].read_bytes()
    check_parquet_output(shards, out)
