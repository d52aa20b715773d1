"""The output contract end to end, on real local folders, without Ray: everything here is decided
on the driver before any cluster work (or by the Ray-free stages), so each case runs in seconds.
Each test reproduces a way the job once destroyed, silently redid or misreported work."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_inpaint.cli import main
from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.job.driver import plan, results
from batch_inpaint.job.driver.finalize import finalize
from batch_inpaint.job.driver.lock import OutputLock
from batch_inpaint.job.run import run_job
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import ExitCode
from tests.fixtures_ray import local_dataset, manifest_bytes, manifest_table
from tests.job.helpers import context


def _complete(root: Path, rows: list[dict], out: Path | None = None, **settings) -> Path:
    """An output that a finished run made: the rows through the real stages and finalize."""
    cfg = JobConfig(manifest=str(root / "manifest.parquet"), output=str(out or root / "out"),
                    backend="opencv", **settings)  # fmt: skip
    storage = Storage()
    run, state = plan.check_run(cfg, storage, echo=lambda *_: None)
    job = plan.open_run(run, state)
    ctx = context(root, output=cfg.output)
    table = finish_batch(ModelStage(ctx, inpainter=OpenCVInpainter())(
        prepare_batch(manifest_table(rows), ctx)), ctx)  # fmt: skip
    job.writer.add(table)
    job.writer.flush()
    assert finalize(run)["success"]
    return Path(cfg.output)


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_output_over_the_inputs_is_refused_before_anything_is_written(tmp_path, capsys):
    data = tmp_path / "data"
    manifest, _ = local_dataset(data, 3)
    (data / "metadata").mkdir()
    (data / "metadata" / "stray.parquet").write_bytes(b"the user's")
    before = _tree(data)
    rc = main(["run", "--manifest", str(manifest), "--output", str(data), "--backend", "opencv"])
    err = capsys.readouterr().err
    assert rc == ExitCode.CONFIG
    assert f"output {data} contains {data}/" in err and "which the manifest reads" in err
    assert _tree(data) == before  # nothing written, nothing deleted


def test_a_folder_the_job_did_not_make_is_refused_then_shared_without_touching_it(tmp_path, capsys):
    manifest, rows = local_dataset(tmp_path, 2)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "keep.png").write_bytes(b"user's file")
    args = ["run", "--manifest", str(manifest), "--output", str(out), "--backend", "opencv"]
    assert main(args) == ExitCode.CONFIG
    assert "no run of batch-inpaint made it" in capsys.readouterr().err
    assert main([*args, "--allow-non-empty-output"]) == ExitCode.CONFIG  # images/ is ours to write
    assert "already holds ['images']" in capsys.readouterr().err
    assert _tree(out) == {"images/keep.png": b"user's file"}

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("user's")
    # allowed for a location with none of the job's names
    _complete(tmp_path, rows, out=shared, allow_non_empty_output=True)
    assert (shared / "notes.txt").read_text() == "user's"
    assert (shared / "_BATCH_INPAINT").is_file() and (shared / "_SUCCESS").is_file()


def test_a_run_refuses_an_output_whose_lock_is_held(tmp_path, capsys):
    manifest, _ = local_dataset(tmp_path, 2)
    out = tmp_path / "out"
    held = OutputLock(Storage(), str(out), ttl_s=60)
    held.acquire()
    try:  # a plain run, not only --incremental, takes the lock
        rc = main(["run", "--manifest", str(manifest), "--output", str(out), "--backend", "opencv"])
    finally:
        held.release()
    assert rc == ExitCode.LOCKED
    err = capsys.readouterr().err
    assert "another run into this output is in progress" in err and held.host in err


def test_a_run_withdraws_success_before_it_starts_work(tmp_path):
    manifest, rows = local_dataset(tmp_path, 3)
    manifest.write_bytes(manifest_bytes(rows[:2]))
    out = _complete(tmp_path, rows[:2])
    assert (out / "_SUCCESS").is_file()
    manifest.write_bytes(manifest_bytes(rows))  # a bigger manifest: this run will write
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv")
    run, state = plan.check_run(cfg, Storage(), echo=lambda *_: None)
    with plan.lock_for(run):
        job = plan.open_run(run, state)
    assert job.todo == 1 and not (out / "_SUCCESS").exists()  # killed from here on: no _SUCCESS


def test_an_empty_manifest_gives_a_clean_empty_result_without_starting_ray(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    empty = pa.table({c: pa.array([], pa.string()) for c in ("id", "image", "mask")})
    pq.write_table(empty, manifest)
    said: list[str] = []
    cfg = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), backend="opencv")
    summary = run_job(cfg, echo=said.append)
    assert summary["success"] and summary["rows"] == 0
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["rows"] == 0
    assert not any("Ray:" in line for line in said)  # nothing to do: Ray never started


def test_a_rerun_with_nothing_to_do_does_not_start_ray(tmp_path):
    manifest, rows = local_dataset(tmp_path, 3)
    out = _complete(tmp_path, rows)
    said: list[str] = []
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv")
    summary = run_job(cfg, echo=said.append)
    assert summary["success"] and summary["rows_this_run"] == 0
    assert "3 already done" in said[0] and not any("Ray:" in line for line in said)


def test_conflicting_part_schemas_are_refused_before_cluster_work(tmp_path):
    _, rows = local_dataset(tmp_path, 2)
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(manifest_table([{**rows[0], "extra": "a"}]), parts / "a.parquet")
    b = manifest_table([rows[1]]).append_column("extra", pa.array([7], pa.int64()))
    pq.write_table(b, parts / "b.parquet")
    cfg = JobConfig(manifest=str(parts), output=str(tmp_path / "out"), backend="opencv")
    with pytest.raises(ConfigError, match="column 'extra' is string in part .*a.parquet but int64"):
        run_job(cfg, echo=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_a_copied_output_resumes_everything(tmp_path):
    manifest, rows = local_dataset(tmp_path, 4)
    out = _complete(tmp_path, rows)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(out)
    cfg = JobConfig(manifest=str(manifest), output=str(copy), backend="opencv")
    run, state = plan.check_run(cfg, Storage(), echo=lambda *_: None)
    with plan.lock_for(run):
        assert plan.open_run(run, state).todo == 0
    meta = pq.read_table(copy / "metadata").to_pylist()
    assert {r["output"] for r in meta} == {f"images/{r['id']}.png" for r in rows}  # relative


def test_a_damaged_results_file_is_set_aside_and_the_run_stops(tmp_path, capsys):
    manifest, rows = local_dataset(tmp_path, 3)
    out = _complete(tmp_path, rows)
    (results_file,) = (out / "metadata").glob("results-*.parquet")
    good = results_file.read_bytes()
    results_file.write_bytes(good[: len(good) // 2])  # truncated
    args = ["run", "--manifest", str(manifest), "--output", str(out), "--backend", "opencv"]
    assert main(args) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert results_file.name in err and "moved to" in err and "Nothing was deleted" in err
    (aside,) = (out / "metadata" / "_damaged").iterdir()
    assert aside.read_bytes() == good[: len(good) // 2]  # kept, byte for byte
    assert not any(p.is_file() for p in (out / "images").iterdir() if p.stat().st_size == 0)


@pytest.mark.skipif(sys.platform != "linux", reason="needs POSIX permissions")
def test_a_listing_that_fails_stops_the_run_instead_of_recomputing(tmp_path_factory):
    # A folder others may traverse, so that only metadata/ is closed to the run's user.
    root = Path(tmp_path_factory.mktemp("denied", numbered=True))
    for p in (root, *root.parents):
        if p == Path("/tmp"):
            break
        p.chmod(0o755)
    manifest, rows = local_dataset(root, 2)
    out = _complete(root, rows)
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv")
    run, state = plan.check_run(cfg, Storage(), echo=lambda *_: None)
    meta = out / "metadata"
    as_root = os.geteuid() == 0
    if as_root:  # root reads anything: the run's user becomes nobody, owning the output
        for p in (out, *out.rglob("*")):
            os.chown(p, 65534, 65534)
        os.chown(meta, 0, 0)
    meta.chmod(0)
    try:
        if as_root:
            os.setegid(65534), os.seteuid(65534)
        with pytest.raises(Exception, match="can't tell what earlier runs .* finished") as err:
            plan.open_run(run, state)
    finally:
        if as_root:
            os.seteuid(0), os.setegid(0)
        meta.chmod(0o755)
    assert err.value.kind == "access_denied" and "listing" in str(err.value)
    assert len(list(meta.glob("*.parquet"))) == 1  # nothing was touched


def test_transient_error_rows_are_redone_by_default_and_bad_input_is_not(tmp_path):
    manifest, rows = local_dataset(tmp_path, 3)
    manifest.write_bytes(manifest_bytes(rows[:1]))
    out = _complete(tmp_path, rows[:1])
    table = pq.read_table(out / "metadata")
    r = table.to_pylist()[0]
    failed = [{**r, "id": "r001", "status": "error", "error_kind": "storage_transient",
               "output": None}, {**r, "id": "r002", "status": "error", "error_kind": "decode",
               "output": None}]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(failed, table.schema), out / "metadata" / "part-x.parquet")
    read, _ = results.read_results(Storage(), str(out))
    assert results.done_ids(Storage(), str(out), False, read) == {"r000", "r002"}
    assert results.done_ids(Storage(), str(out), True, read) == {"r000"}


def test_signatures_in_manifest_uris_never_reach_the_results(tmp_path):
    rows = [{"id": "signed", "image": "https://h/x.png?X-Amz-Signature=topsecret&X-Amz-Date=1",
             "mask_boxes": [[1.0, 1.0, 5.0, 5.0]]}]  # fmt: skip
    ctx = context(tmp_path)
    out = finish_batch(ModelStage(ctx, inpainter=OpenCVInpainter())(
        prepare_batch(manifest_table(rows), ctx)), ctx)  # fmt: skip
    text = json.dumps(out.to_pylist(), default=str)
    assert "topsecret" not in text and "X-Amz-Date=1" in text


def test_a_symlink_planted_in_images_cannot_make_the_job_write_outside(tmp_path):
    manifest, rows = local_dataset(tmp_path, 1)
    ctx = context(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images").symlink_to(outside)
    out = finish_batch(ModelStage(ctx, inpainter=OpenCVInpainter())(
        prepare_batch(manifest_table(rows), ctx)), ctx)  # fmt: skip
    (row,) = out.to_pylist()
    assert row["status"] == "error" and "link" in row["error"] and row["id"] in row["error"]
    assert list(outside.iterdir()) == []


def test_outputs_are_written_with_ordinary_modes(tmp_path):
    _, rows = local_dataset(tmp_path, 1)
    out = _complete(tmp_path, rows)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("images/r000.png", "run.json", "_SUCCESS"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert time.time()  # the files above were written by this run


def test_nothing_to_do_imports_neither_ray_nor_torch(tmp_path):
    """A rerun with nothing left costs its bookkeeping only (no Ray start, no model libraries)."""
    import subprocess

    manifest, rows = local_dataset(tmp_path, 2)
    out = _complete(tmp_path, rows)
    code = (
        "import sys, json\n"
        "from batch_inpaint import JobConfig, run_job\n"
        f"s = run_job(JobConfig(manifest={str(manifest)!r}, output={str(out)!r}, backend='opencv'),"
        " echo=lambda *_: None)\n"
        "print(json.dumps([s['success'], s['rows_this_run'],"
        " sorted(m for m in ('ray', 'torch', 'diffusers') if m in sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True, 0, []]


def test_a_missing_local_model_folder_fails_before_ray_or_any_write(tmp_path, capsys):
    manifest, _ = local_dataset(tmp_path, 1)
    out = tmp_path / "out"
    args = ["run", "--manifest", str(manifest), "--output", str(out), "--backend", "diffusers",
            "--model", str(tmp_path / "no-such-model")]  # fmt: skip
    assert main(args) == ExitCode.CONFIG
    assert "no-such-model not found" in capsys.readouterr().err
    assert not out.exists()
