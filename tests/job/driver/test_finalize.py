"""finalize on a local output folder, without Ray: result parts written by the real stages, then
the end of the run (compaction, what may be deleted, missing objects, ids gone from the manifest,
_SUCCESS before run.json); and job.json keeping credentials out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver import results
from batch_inpaint.job.driver.finalize import RunState, finalize
from batch_inpaint.job.driver.scan import scan_manifest
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from tests.fixtures_ray import local_dataset, manifest_bytes, manifest_table
from tests.job.helpers import context


def _stages_into_parts(root: Path, rows: list[dict]) -> tuple:
    """The rows through the three stages, their result rows written as metadata parts."""
    ctx = context(root)
    out = finish_batch(ModelStage(ctx, inpainter=OpenCVInpainter())(
        prepare_batch(manifest_table(rows), ctx)), ctx)  # fmt: skip
    writer = results.MetadataWriter(ctx.storage, ctx.config.output, "run-a", 2, 60.0)
    for i in range(out.num_rows):  # as result batches reach the driver
        writer.add(out.slice(i, 1))
    writer.flush()
    return ctx, out


def _finalize(ctx, processed: int) -> tuple[dict, list[str]]:
    said: list[str] = []
    scan = scan_manifest(ctx.storage, ctx.config)
    run = RunState(ctx.config, ctx.storage, scan, "run-a", time.time() - 1, processed, said.append)
    return finalize(run), said


def test_a_complete_run_is_compacted_and_marked_successful(tmp_path):
    _, rows = local_dataset(tmp_path, 3)
    ctx, _ = _stages_into_parts(tmp_path, rows)
    out = Path(ctx.config.output)
    assert len(list((out / "metadata").glob("part-*.parquet"))) == 2  # flush_rows=2
    (out / "images" / "stray.jpg").write_bytes(b"no run of the job wrote this")
    (out / "images" / "r001.webp").write_bytes(b"an earlier run's other format")
    summary, said = _finalize(ctx, 3)
    assert summary["success"] and summary["problems"] == []
    assert summary["counts"] == {"ok": 3, "error": 0, "skipped": 0}
    # r001.webp is the key of a manifest id in one of the job's formats: ours, and stale.
    assert summary["orphans_removed"] == 1 and not (out / "images" / "r001.webp").exists()
    # stray.jpg could not have been written by the job: it stays, and is counted.
    assert summary["unknown_objects_kept"] == 1 and (out / "images" / "stray.jpg").exists()
    files = sorted(p.name for p in (out / "metadata").iterdir())
    assert files == ["results-run-a.parquet"]
    assert pq.read_table(out / "metadata").num_rows == 3
    assert json.loads((out / "_SUCCESS").read_text()) == {"run_id": "run-a", "rows": 3}
    assert json.loads((out / "run.json").read_text())["counts"] == summary["counts"]
    assert (out / "report.html").is_file() and "SUCCESS - 3 ok" in said[-1]


def test_a_missing_object_or_row_fails_the_run_and_removes_success(tmp_path):
    manifest, rows = local_dataset(tmp_path, 3)
    ctx, _ = _stages_into_parts(tmp_path, rows[:2])  # r002 never ran
    out = Path(ctx.config.output)
    (out / "_SUCCESS").write_text("{}")  # from an earlier, complete run
    (out / "images" / "r000.png").unlink()
    summary, said = _finalize(ctx, 2)
    assert not summary["success"]
    problems = "\n".join(summary["problems"])
    assert "r000.png: missing" in problems
    assert "1 manifest row(s) have no result, e.g. ['r002']" in problems
    assert not (out / "_SUCCESS").exists() and "INCOMPLETE" in said[-1]


def test_rows_of_ids_gone_from_the_manifest_are_kept_unless_pruned(tmp_path):
    manifest, rows = local_dataset(tmp_path, 3)
    ctx, _ = _stages_into_parts(tmp_path, rows)
    manifest.write_bytes(manifest_bytes(rows[:1]))  # a one-row manifest into a full output
    summary, _ = _finalize(ctx, 0)
    out = Path(ctx.config.output)
    assert summary["success"] and summary["rows"] == 1
    assert summary["rows_of_other_manifests_kept"] == 2 and summary["rows_pruned"] == 0
    ids = sorted(pq.read_table(out / "metadata").column("id").to_pylist())
    assert ids == ["r000", "r001", "r002"]
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "r000.png",
        "r001.png",
        "r002.png",
    ]

    ctx.config.prune = True  # asked for: their rows and images go
    summary, _ = _finalize(ctx, 0)
    assert summary["success"] and summary["rows_pruned"] == 2
    assert pq.read_table(out / "metadata").column("id").to_pylist() == ["r000"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["r000.png"]


def test_run_json_says_success_only_with_success_written(tmp_path):
    _, rows = local_dataset(tmp_path, 2)
    ctx, _ = _stages_into_parts(tmp_path, rows)
    out = Path(ctx.config.output)
    summary, _ = _finalize(ctx, 2)
    assert json.loads((out / "run.json").read_text())["success"] is True
    assert (out / "_SUCCESS").stat().st_mtime_ns <= (out / "run.json").stat().st_mtime_ns


def test_rows_failed_for_a_transient_reason_leave_the_run_incomplete(tmp_path):
    _, rows = local_dataset(tmp_path, 2)
    ctx, out_rows = _stages_into_parts(tmp_path, rows[:1])
    out = Path(ctx.config.output)
    part = out / "metadata" / "part-run-b-00000.parquet"  # r001 failed on storage
    failed = out_rows.to_pylist()
    failed[0].update(id="r001", status="error", error_kind="storage_transient", error="503",
                     output=None)  # fmt: skip
    pq.write_table(out_rows.schema.empty_table().from_pylist(failed, out_rows.schema), part)
    summary, said = _finalize(ctx, 1)
    assert not summary["success"] and not (out / "_SUCCESS").exists()
    assert any("transient" in p for p in summary["problems"])
    assert summary["errors_by_kind"] == {"storage_transient": 1}


def test_an_empty_output_finalizes_to_an_incomplete_run(tmp_path):
    _, rows = local_dataset(tmp_path, 2)
    ctx = context(tmp_path)
    summary, _ = _finalize(ctx, 0)
    assert not summary["success"]
    assert "2 manifest row(s) have no result" in summary["problems"][0]


def test_job_json_keeps_credentials_in_uris_out():
    """A MinIO endpoint or presigned manifest URL can carry credentials; job.json must not."""
    cfg = JobConfig(
        manifest="https://host/m.parquet?X-Amz-Signature=sig-value-123",
        output="s3://b/out",
        endpoint_url="http://minio-user:minio-pass-123@127.0.0.1:9000",
        address="ray://admin:ray-pass-123@head:10001",
    )
    text = json.dumps(results.job_json(cfg, "run-1"))
    for secret in ("minio-pass-123", "sig-value-123", "ray-pass-123"):
        assert secret not in text
    assert "127.0.0.1:9000" in text and "s3://b/out" in text
