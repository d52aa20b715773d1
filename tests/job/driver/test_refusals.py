"""A refused run changes nothing, and refuses early: a user's `_LOCK`, an output over its inputs
reached through a symlink, a bad LaMa weights file, a listing that fails; the dry run exits as
the run would. Real local folders, the CLI, no Ray (every refusal comes before cluster work)."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest

from batch_inpaint.cli import main
from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver import plan
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import ExitCode
from tests.fixtures_ray import local_dataset, manifest_bytes
from tests.job.test_contract import _complete, _tree


def _run(manifest: Path, out: Path, *flags: str) -> list[str]:
    return ["run", "--manifest", str(manifest), "--output", str(out), "--backend", "opencv",
            *flags]  # fmt: skip


def test_a_users_lock_file_is_never_taken_over(tmp_path, capsys):
    manifest, _ = local_dataset(tmp_path / "data", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "_LOCK").write_text("my lock-picking notes")
    assert main(_run(manifest, out)) == ExitCode.CONFIG
    assert f"output {out} holds _LOCK" in capsys.readouterr().err
    (out / "notes.txt").write_text("user's")
    assert main(_run(manifest, out, "--allow-non-empty-output")) == ExitCode.CONFIG
    assert "holds _LOCK" in capsys.readouterr().err
    assert _tree(out) == {"_LOCK": b"my lock-picking notes", "notes.txt": b"user's"}


def test_inputs_read_through_a_symlink_to_the_output_are_refused(tmp_path, capsys):
    """The reported case: a manifest reading a finished output's images through a symlinked
    path, run with --no-resume into that output, overwrote all its inputs in place."""
    manifest, rows = local_dataset(tmp_path, 3)
    out = _complete(tmp_path, rows)
    (tmp_path / "link").symlink_to(out)
    again = [{**r, "image": f"link/images/{r['id']}.png"} for r in rows]
    manifest.write_bytes(manifest_bytes(again))
    before = _tree(out)
    assert main(_run(manifest, out, "--no-resume")) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "link/images" in err and "through a symbolic link" in err
    assert _tree(out) == before
    # and an output reached through a symlink to the inputs' folder
    data, _ = local_dataset(tmp_path / "data", 2)
    (tmp_path / "to-data").symlink_to(tmp_path / "data")
    before = _tree(tmp_path / "data")
    assert main(_run(data, tmp_path / "to-data" / "images")) == ExitCode.CONFIG
    assert "through a symbolic link" in capsys.readouterr().err
    assert _tree(tmp_path / "data") == before


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker if it ever ran


def test_bad_lama_weights_are_refused_on_the_driver_before_ray(tmp_path, capsys):
    pytest.importorskip("spandrel")
    from safetensors.numpy import save_file

    manifest, _ = local_dataset(tmp_path / "data", 1)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
    import numpy as np

    damaged = tmp_path / "damaged.safetensors"
    save_file({"w": np.zeros((64, 64), np.float32)}, str(damaged))
    damaged.write_bytes(damaged.read_bytes()[:-100])  # truncated: a download cut short
    for weights, words in ((evil, "weights-only loader"), (damaged, "not a readable safetensors")):
        out = tmp_path / f"out-{weights.stem}"
        args = ["run", "--manifest", str(manifest), "--output", str(out), "--backend", "lama",
                "--model", str(weights), "--device", "cpu"]  # fmt: skip
        assert main(args) == ExitCode.CONFIG
        err = capsys.readouterr().err
        assert str(weights) in err and words in err, err
        assert not out.exists()
    assert not marker.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="needs POSIX permissions")
def test_a_run_refused_for_a_denied_listing_keeps_success(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("denied", numbered=True))
    for p in (root, *root.parents):
        if p == Path("/tmp"):
            break
        p.chmod(0o755)
    manifest, rows = local_dataset(root, 2)
    out = _complete(root, rows)
    success = (out / "_SUCCESS").read_bytes()
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
        with pytest.raises(Exception, match="can't tell what earlier runs"):
            plan.open_run(run, state)
    finally:
        if as_root:
            os.seteuid(0), os.setegid(0)
        meta.chmod(0o755)
    assert (out / "_SUCCESS").read_bytes() == success  # a refused run changed nothing


def test_damaged_results_withdraw_success_and_the_dry_run_exits_as_the_run(tmp_path, capsys):
    manifest, rows = local_dataset(tmp_path, 2)
    out = _complete(tmp_path, rows)
    (part,) = (out / "metadata").glob("results-*.parquet")
    part.write_bytes(part.read_bytes()[:50])
    assert main(_run(manifest, out, "--dry-run")) == ExitCode.CONFIG  # a run would stop: 2
    assert "DAMAGED" in capsys.readouterr().out and (out / "_SUCCESS").is_file()  # untouched
    assert main(_run(manifest, out)) == ExitCode.CONFIG
    assert not (out / "_SUCCESS").exists()  # its rows went aside: the output is not complete
    assert list((out / "metadata" / "_damaged").iterdir())


def test_the_dry_run_exits_3_while_the_lock_is_held(tmp_path, capsys):
    manifest, rows = local_dataset(tmp_path, 2)
    out = _complete(tmp_path, rows)
    cfg = JobConfig(manifest=str(manifest), output=str(out), backend="opencv")
    with plan.lock_for(plan.check_run(cfg, Storage(), echo=lambda *_: None)[0]):
        assert main(_run(manifest, out, "--dry-run")) == ExitCode.LOCKED
    assert "LOCKED" in capsys.readouterr().out
    assert main(_run(manifest, out, "--dry-run")) == ExitCode.OK
