"""max_error_rate, without Ray: the real stages and finalize over a manifest whose rows are half
undecodable. A breach is a finished run whose results a pipeline must not consume: exit 4
(ExitCode.ERROR_RATE), no _SUCCESS, run.json says why; transient errors are counted apart."""

from __future__ import annotations

import json
import time
from pathlib import Path

from batch_inpaint.cli import job_exit_status
from batch_inpaint.job.driver import results
from batch_inpaint.job.driver.finalize import RunState, finalize
from batch_inpaint.job.driver.scan import scan_manifest
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.vocab import ErrorKind, ExitCode
from tests.fixtures_ray import local_dataset, manifest_table
from tests.job.helpers import context


def _run(root: Path, rows: list[dict], **settings) -> dict:
    ctx = context(root, **settings)
    out = finish_batch(ModelStage(ctx, inpainter=OpenCVInpainter())(
        prepare_batch(manifest_table(rows), ctx)), ctx)  # fmt: skip
    writer = results.MetadataWriter(ctx.storage, ctx.config.output, "run-a", 100, 60.0)
    writer.add(out)
    writer.flush()
    scan = scan_manifest(ctx.storage, ctx.config)
    run = RunState(ctx.config, ctx.storage, scan, "run-a", time.time() - 1, len(rows), print)
    return finalize(run)


def _half_undecodable(root: Path, n: int = 10) -> list[dict]:
    _, rows = local_dataset(root, n)
    for r in rows[: n // 2]:
        (root / r["image"]).write_bytes(b"not an image at all")
    return rows


def test_error_rate_above_the_limit_exits_4_without_success(tmp_path):
    rows = _half_undecodable(tmp_path)
    summary = _run(tmp_path, rows, max_error_rate=0.2)
    out = tmp_path / "out"
    assert summary["counts"] == {"ok": 5, "error": 5, "skipped": 0}
    assert summary["errors_by_kind"] == {ErrorKind.DECODE.value: 5}
    assert summary["error_rate"] == {"bad_input": 0.5, "transient": 0.0, "max": 0.2,
                                     "exceeded": True}  # fmt: skip
    assert not summary["success"] and job_exit_status(summary) == ExitCode.ERROR_RATE == 4
    assert not (out / "_SUCCESS").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["error_rate"]["exceeded"] and not run["success"]
    assert any("more than max_error_rate 0.2" in p for p in run["problems"]), run["problems"]
    # the good rows' results are kept: a rerun after fixing the inputs redoes only the others
    assert sorted((out / "images").iterdir()) and len(list((out / "images").iterdir())) == 5


def test_error_rate_within_the_limit_or_unset_succeeds(tmp_path):
    rows = _half_undecodable(tmp_path / "a")
    summary = _run(tmp_path / "a", rows, max_error_rate=0.5)  # 50% is not above 50%
    assert summary["success"] and job_exit_status(summary) == ExitCode.ROW_ERRORS
    assert not summary["error_rate"]["exceeded"]
    rows = _half_undecodable(tmp_path / "b")
    summary = _run(tmp_path / "b", rows, max_error_rate=None)  # none: no limit
    assert summary["success"] and summary["error_rate"]["max"] is None


def test_transient_errors_are_counted_apart_from_the_rate(tmp_path):
    """Rows that failed for a transient reason are not bad input: they never count against F
    (the run is still incomplete, exit 1, because they must be redone)."""
    _, rows = local_dataset(tmp_path, 4)
    ctx = context(tmp_path, max_error_rate=0.1)
    out = finish_batch(ModelStage(ctx, inpainter=OpenCVInpainter())(
        prepare_batch(manifest_table(rows), ctx)), ctx)  # fmt: skip
    status = out.column("status").to_pylist()
    kinds = out.column("error_kind").to_pylist()
    status[0], kinds[0] = "error", ErrorKind.OUT_OF_MEMORY.value
    status[1], kinds[1] = "error", ErrorKind.STORAGE_TRANSIENT.value
    out = out.set_column(out.schema.get_field_index("status"), "status", [status])
    out = out.set_column(out.schema.get_field_index("error_kind"), "error_kind", [kinds])
    writer = results.MetadataWriter(ctx.storage, ctx.config.output, "run-a", 100, 60.0)
    writer.add(out)
    writer.flush()
    scan = scan_manifest(ctx.storage, ctx.config)
    summary = finalize(RunState(ctx.config, ctx.storage, scan, "run-a", time.time(), 4, print))
    assert summary["error_rate"] == {"bad_input": 0.0, "transient": 0.5, "max": 0.1,
                                     "exceeded": False}  # fmt: skip
    assert not summary["success"] and job_exit_status(summary) == ExitCode.INCOMPLETE
