"""jobs/clean.py, the scheduled-cleaning entrypoint: each run pairs the images and masks under two
prefixes and processes only what earlier runs into the same output did not finish."""

from __future__ import annotations

import importlib.util

import pyarrow as pa
import pyarrow.compute as pc
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


def _tar(path, shard: int, rows: int = 2) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path), encoder=False) as writer:
        for i in range(rows):
            writer.write({"__key__": f"{shard:05d}_{i}", "png": png(sample_image(48, 32, i)),
                          "mask.png": png(box_mask(48, 32, (4, 4, 20, 20))),
                          "json": b'{"n": %d}' % i})  # fmt: skip


def test_a_growing_set_of_shards_runs_only_its_new_shards(tmp_path, capsys):
    import webdataset as wds

    main = _clean_main()
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        _tar(shards / f"{s:05d}.tar", s)
    out = tmp_path / "out"
    # the pattern names shards still to come: they are not refused, only not there yet
    args = ["--manifest", f"{shards}/{{00000..00009}}.tar", "--output", str(out),
            "--backend", "opencv", "--executor", "local"]  # fmt: skip
    assert main(args) == ExitCode.OK
    assert "2 shards to run (0 done)" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "data").iterdir()) == ["00000.tar", "00001.tar"]
    first = (out / "data" / "00000.tar").stat().st_mtime_ns

    _tar(shards / "00002.tar", 2)  # a new shard arrives before the next scheduled run
    assert main(args) == ExitCode.OK
    said = capsys.readouterr().out
    assert "1 shards to run (2 done)" in said
    assert (out / "data" / "00000.tar").stat().st_mtime_ns == first  # not rewritten
    back = list(wds.WebDataset(str(out / "data" / "00002.tar"), shardshuffle=False))
    assert [s["__key__"] for s in back] == ["00002_0", "00002_1"]
    assert [s["json"] for s in back] == [b'{"n": 0}', b'{"n": 1}']
    assert len(list((out / "manifests").glob("*.shards.json"))) == 2

    assert main(args) == ExitCode.OK
    assert "no new shards (3 done)" in capsys.readouterr().out
    meta = pq.read_table(out / "metadata").to_pylist()
    assert sorted(r["id"] for r in meta) == [f"{s:05d}_{i}" for s in range(3) for i in range(2)]
    assert all(r["status"] == "ok" for r in meta)

    # a row of shard 1 failed transiently (as a storage outage leaves it): that shard is redone
    (part,) = (out / "metadata").glob("*.parquet")
    table = pq.read_table(part)
    failed = pa.array([r == "00001_1" for r in table.column("id").to_pylist()])
    for name, value in (("status", "error"), ("error_kind", "storage_transient")):
        at = table.schema.get_field_index(name)
        column = pc.if_else(failed, pa.scalar(value, table.schema.field(at).type), table[name])
        table = table.set_column(at, table.schema.field(at), column)
    pq.write_table(table, part)
    assert main(args) == ExitCode.OK
    assert "1 shards to run (2 done)" in capsys.readouterr().out
    meta = {r["id"]: r for r in pq.read_table(out / "metadata").to_pylist()}
    assert meta["00001_1"]["status"] == "ok"
    assert (out / "data" / "00000.tar").stat().st_mtime_ns == first
