"""jobs/clean.py, the scheduled-cleaning entrypoint: each run pairs the images and masks under two
prefixes and processes only what earlier runs into the same output did not finish."""

from __future__ import annotations

import importlib.util

import pyarrow.parquet as pq

from batch_inpaint.vocab import ExitCode
from tests.fixtures_ray import REPO, box_mask, png, sample_image


def _clean_main():
    spec = importlib.util.spec_from_file_location("clean_job", REPO / "jobs" / "clean.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _add(root, name, seed):
    (root / "images" / f"{name}.png").write_bytes(png(sample_image(48, 32, seed)))
    (root / "masks" / f"{name}.png").write_bytes(png(box_mask(48, 32, (4, 4, 20, 20))))


def test_each_run_processes_only_new_objects(ray_local, tmp_path, capsys):
    main = _clean_main()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        _add(tmp_path, f"a{i}", i)
    (tmp_path / "images" / "lonely.png").write_bytes(png(sample_image(48, 32, 9)))  # no mask
    out = tmp_path / "out"
    args = ["--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
            "--output", str(out), "--backend", "opencv"]  # fmt: skip
    assert main(args) == ExitCode.OK
    first = capsys.readouterr().out
    assert "lonely" in first  # unpaired files are reported, not dropped silently
    assert "3 to process" in first
    _add(tmp_path, "b0", 7)  # a new upload arrives before the next scheduled run
    assert main(args) == ExitCode.OK
    second = capsys.readouterr().out
    assert "3 already done" in second and "1 to process" in second
    meta = pq.read_table(out / "metadata").to_pylist()
    assert sorted(r["id"] for r in meta) == ["a0", "a1", "a2", "b0"]
    assert all(r["status"] == "ok" for r in meta)
    assert (out / "_SUCCESS").is_file() and not (out / "_LOCK").exists()


def test_manifest_and_prefixes_together_is_a_config_error(tmp_path, capsys):
    main = _clean_main()
    rc = main(
        ["--manifest", "m.parquet", "--images", str(tmp_path), "--output", str(tmp_path / "o")]
    )
    assert rc == ExitCode.CONFIG
    assert "not both" in capsys.readouterr().err


def test_a_held_lock_exits_locked_from_every_entry_point(tmp_path, capsys):
    from batch_inpaint.cli import main as cli
    from batch_inpaint.job.driver.lock import OutputLock
    from batch_inpaint.storage.store import Storage

    out = tmp_path / "out"
    lock = OutputLock(Storage(), str(out), ttl_s=3600)
    lock.acquire()  # another run, alive and renewing
    try:
        args = ["--manifest", str(REPO / "examples" / "manifest.parquet"), "--output", str(out),
                "--backend", "opencv"]  # fmt: skip
        assert _clean_main()(args) == ExitCode.LOCKED == 3
        assert "jobs/clean.py: locked:" in capsys.readouterr().err
        assert cli(["run", *args, "--incremental"]) == ExitCode.LOCKED
        assert "batch-inpaint run: error:" in capsys.readouterr().err
    finally:
        lock.release()
    assert not (out / "_LOCK").exists()
