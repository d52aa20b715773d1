"""Storage that fails for good mid-run (a full disk, a long 503 storm on every PUT): the run stops
cleanly, says what happened and exits with a status a scheduler can act on (1: rows left to redo,
5: the results themselves could not be written), never a traceback; a rerun finishes with every
row once. The in-process executor and real storage (a 1.2 MB tmpfs; moto behind the fault proxy);
the storage retry budget is made short so a failure past it comes in seconds, not minutes."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from batch_inpaint.cli import main
from batch_inpaint.job.driver.results import read_results
from batch_inpaint.storage.options import StorageOptions
from batch_inpaint.storage.store import Storage
from tests.fixtures_ray import box_mask, manifest_bytes, png, sample_image
from tests.fixtures_s3 import put_objects

N = 120


@pytest.fixture
def short_retries(monkeypatch):
    original = StorageOptions.from_env.__func__

    def quick(cls, env=None, **overrides):
        return original(cls, env, **overrides).replace(retries=2, backoff_s=0.01)

    monkeypatch.setattr(StorageOptions, "from_env", classmethod(quick))


def _files() -> tuple[dict[str, bytes], bytes]:
    files, rows = {}, []
    for i in range(N):
        rid = f"r{i:03d}"
        files[f"images/{rid}.png"] = png(sample_image(96, 72, i))
        files[f"masks/{rid}.png"] = png(box_mask(96, 72, (4, 6, 40 + i % 9, 40)))
        rows.append({"id": rid, "image": f"images/{rid}.png", "mask": f"masks/{rid}.png"})
    return files, manifest_bytes(rows)


def _write_local(root: Path) -> str:
    files, manifest = _files()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "manifest.parquet").write_bytes(manifest)
    return str(root / "manifest.parquet")


def _run(manifest: str, output: str, *extra: str) -> int:
    return main(["run", "--manifest", manifest, "--output", output, "--backend", "opencv",
                 "--executor", "local", "--flush-rows", "10", *extra])  # fmt: skip


def _assert_whole(storage: Storage, output: str) -> None:
    table, _ = read_results(storage, output)
    assert sorted(table.column("id").to_pylist()) == [f"r{i:03d}" for i in range(N)]
    assert set(table.column("status").to_pylist()) == {"ok"}
    images = {u.rsplit("/images/", 1)[1] for u in storage.list(output + "/images")}
    assert images == {o.removeprefix("images/") for o in table.column("output").to_pylist()}
    assert storage.exists(output + "/_SUCCESS")


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "small"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(where)],
                       capture_output=True)  # fmt: skip
    if r.returncode:
        pytest.skip(f"can't mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_run_cleanly_and_a_rerun_finishes(tmp_path, small_disk,
                                                                 short_retries, capsys):  # fmt: skip
    manifest = _write_local(tmp_path / "in")
    out = small_disk / "out"
    code = _run(manifest, str(out))
    said = capsys.readouterr()
    assert code in (1, 5), said.out + said.err
    assert "Traceback" not in said.out + said.err
    if code == 5:  # the results could not be written: it says so and how to finish
        assert "rerun" in said.err and "could not be written" in said.err
    else:  # the results went out: the rows the disk refused are transient error rows
        assert "storage_transient" in said.out + said.err or "transient" in said.out
    # Room again (the output copied to a bigger disk: outputs are relative): a rerun finishes.
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, symlinks=True)
    assert _run(manifest, str(moved)) == 0, capsys.readouterr()
    _assert_whole(Storage(), str(moved))


@pytest.mark.slow
def test_503s_on_every_put_past_the_retries_stop_cleanly_and_a_rerun_finishes(
    s3_server, s3_bucket, fault_proxy, short_retries, capsys
):
    files, manifest = _files()
    put_objects(s3_server, s3_bucket, {f"in/{k}": v for k, v in files.items()})
    put_objects(s3_server, s3_bucket, {"in/manifest.parquet": manifest})
    src, out = f"s3://{s3_bucket}/in/manifest.parquet", f"s3://{s3_bucket}/out"
    args = ("--endpoint-url", fault_proxy.url, "--region", "us-east-1")
    storage = Storage(StorageOptions(endpoint_url=s3_server, region="us-east-1"))
    result: dict = {}
    job = threading.Thread(target=lambda: result.setdefault("code", _run(src, out, *args)))
    job.start()
    deadline = time.time() + 120
    while job.is_alive() and not _some(storage, out + "/images"):
        assert time.time() < deadline, "no image after 120 s"
        time.sleep(0.02)
    assert job.is_alive(), "the run ended before the storm: the test proves nothing"
    with fault_proxy.fault("503", methods={"PUT"}) as storm:  # every PUT from here on
        job.join(180)
    assert not job.is_alive() and storm.hits > 0
    said = capsys.readouterr()
    assert result["code"] in (1, 5), said.out + said.err
    assert "Traceback" not in said.out + said.err
    assert _run(src, out, *args) == 0, capsys.readouterr()
    _assert_whole(storage, out)


def _some(storage: Storage, prefix: str) -> bool:
    try:
        return bool(storage.list(prefix))
    except Exception:  # noqa: BLE001 - not there yet
        return False
