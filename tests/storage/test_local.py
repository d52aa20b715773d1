"""Local-disk writes: confined under a root (no symlink is followed out of the output), ordinary
file modes, a full disk is transient, and messages that speak of files, not HTTP codes."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import threading

import pytest

from batch_inpaint.errors import (
    AccessDeniedError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from batch_inpaint.storage import Storage, StorageOptions
from batch_inpaint.vocab import ErrorKind

QUICK = StorageOptions(retries=3, backoff_s=0.01)


@pytest.fixture
def planted(tmp_path):
    """An output folder whose images/ is a symlink to a folder outside it."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"keep me")
    os.symlink(outside, out / "images")
    return out, outside


# --- symlinks -------------------------------------------------------------------------------


def test_write_under_root_refuses_a_linked_folder_and_names_it(planted):
    out, outside = planted
    s = Storage(QUICK)
    for overwrite in (True, False):
        with pytest.raises(StorageError, match="symbolic link") as exc:
            s.write_bytes(str(out / "images" / "a.png"), b"x", overwrite=overwrite, root=str(out))
        assert f"{out}/images" in str(exc.value) and str(outside) in str(exc.value)
        assert exc.value.kind == "storage"
    assert sorted(os.listdir(outside)) == ["secret.png"]  # nothing written outside
    # without a root, behaviour is unchanged: the link is followed
    s.write_bytes(str(out / "images" / "b.png"), b"y")
    assert (outside / "b.png").read_bytes() == b"y"


def test_write_under_root_refuses_deeper_links_and_a_linked_target(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "images").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"keep me")
    os.symlink(outside, out / "images" / "sub")
    os.symlink(outside / "secret.png", out / "images" / "a.png")
    s = Storage(QUICK)
    with pytest.raises(StorageError, match=f"{out}/images/sub -> {outside}"):
        s.write_bytes(str(out / "images" / "sub" / "deep" / "c.png"), b"x", root=str(out))
    for overwrite in (True, False):
        with pytest.raises(StorageError, match=f"{out}/images/a.png -> "):
            s.write_bytes(str(out / "images" / "a.png"), b"x", overwrite=overwrite, root=str(out))
    assert (outside / "secret.png").read_bytes() == b"keep me"
    assert sorted(os.listdir(outside)) == ["secret.png"]
    assert os.path.islink(out / "images" / "a.png")  # refused, not replaced either


def test_write_under_root_allows_a_linked_root_and_refuses_paths_outside(tmp_path):
    real = tmp_path / "real_out"
    real.mkdir()
    os.symlink(real, tmp_path / "out")  # the user's own choice of output: allowed
    s = Storage(QUICK)
    root = str(tmp_path / "out")
    assert s.write_bytes(f"{root}/images/sub/a.png", b"x", root=root)
    assert (real / "images" / "sub" / "a.png").read_bytes() == b"x"
    assert s.write_bytes(f"file://{root}/images/b.png", b"y", root=f"file://{root}")
    for bad in (f"{root}/../escape.png", str(tmp_path / "elsewhere.png"), root):
        with pytest.raises(StorageError, match="not inside the output"):
            s.write_bytes(bad, b"z", root=root)
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "elsewhere.png").exists()
    with pytest.raises(StorageError, match="not inside the output"):
        s.write_bytes("memory://bi-root/other/x.png", b"z", root="memory://bi-root/out")
    assert s.write_bytes("memory://bi-root/out/x.png", b"z", root="memory://bi-root/out/")


def test_delete_under_root_never_goes_through_a_linked_folder(planted):
    out, outside = planted
    s = Storage(QUICK)
    with pytest.raises(StorageError, match="symbolic link"):
        s.delete(str(out / "images" / "secret.png"), root=str(out))
    assert (outside / "secret.png").read_bytes() == b"keep me"
    os.unlink(out / "images")
    (out / "images").mkdir()
    os.symlink(outside / "secret.png", out / "images" / "link.png")
    s.delete(str(out / "images" / "link.png"), root=str(out))  # the link goes, not its target
    assert not os.path.lexists(out / "images" / "link.png")
    assert (outside / "secret.png").read_bytes() == b"keep me"
    s.delete(str(out / "images" / "none" / "x.png"), root=str(out))  # absent: nothing to do


# --- modes ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_local_files_get_ordinary_modes(tmp_path, mask):
    s = Storage(QUICK)
    with _umask(mask):
        s.write_bytes(str(tmp_path / "d" / "a.png"), b"x")
        s.write_bytes(str(tmp_path / "d" / "b.png"), b"x", overwrite=False)
        s.write_bytes(str(tmp_path / "r" / "c.png"), b"x", root=str(tmp_path / "r"))
    for f in ("d/a.png", "d/b.png", "r/c.png"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o666 & ~mask, f
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o777 & ~mask


# --- a full disk ----------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: real ENOSPC from the kernel. Needs root and mount (skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a tmpfs needs root and mount; test_dev_full_is_transient covers ENOSPC")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        pytest.skip(f"can't mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_full_disk_is_transient_and_leaves_no_temp_file(tiny_disk):
    _fill(tiny_disk)
    s = Storage(QUICK)
    with pytest.raises(TransientStorageError, match="after 3 attempts") as exc:
        s.write_bytes(str(tiny_disk / "out" / "a.png"), b"x" * 50_000, root=str(tiny_disk))
    assert exc.value.kind == ErrorKind.STORAGE_TRANSIENT.value
    assert "No space left on device" in str(exc.value)
    assert sorted(os.listdir(tiny_disk / "out")) == []  # no half file, no temp file


def test_full_disk_freed_during_the_retries_succeeds(tiny_disk):
    _fill(tiny_disk)
    s = Storage(StorageOptions(retries=10, backoff_s=0.1, max_backoff_s=1.0))
    threading.Timer(0.3, os.unlink, [tiny_disk / "filler"]).start()
    assert s.write_bytes(str(tiny_disk / "a.png"), b"x" * 50_000)
    assert (tiny_disk / "a.png").stat().st_size == 50_000


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full_is_transient(tmp_path):
    """Writes to /dev/full fail with the kernel's ENOSPC: the classification on any machine."""
    (tmp_path / "src.png").write_bytes(b"x" * 1000)
    with pytest.raises(TransientStorageError) as exc:
        Storage(QUICK).download(str(tmp_path / "src.png"), "/dev/full")
    assert exc.value.kind == "storage_transient"
    assert isinstance(exc.value.__cause__, OSError) and exc.value.__cause__.errno == errno.ENOSPC


# --- messages -------------------------------------------------------------------------------


def test_missing_local_file_says_not_found_with_the_path(tmp_path):
    s = Storage(QUICK)
    with pytest.raises(NotFoundError) as exc:
        s.read_bytes(str(tmp_path / "missing.png"))
    msg = str(exc.value)
    assert "not found" in msg and str(tmp_path / "missing.png") in msg and "404" not in msg
    with pytest.raises(NotFoundError, match="not found") as exc:
        s.download(str(tmp_path / "missing.png"), tmp_path / "dest")
    assert "404" not in str(exc.value)


@contextlib.contextmanager
def _unprivileged():
    """Run as 'nobody' for a moment when root (root ignores file permissions)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_local_permission_denied_says_so_without_http_codes(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.png").write_bytes(b"x")
    os.chmod(locked / "a.png", 0)
    os.chmod(locked, 0o555)
    os.chmod(tmp_path, 0o755)
    s = Storage(QUICK)
    try:
        with _unprivileged():
            with pytest.raises(AccessDeniedError) as read_exc:
                s.read_bytes(str(locked / "a.png"))
            with pytest.raises(AccessDeniedError) as write_exc:
                s.write_bytes(str(locked / "b.png"), b"y")
    finally:
        os.chmod(locked, 0o755)
    for exc, path in ((read_exc, "a.png"), (write_exc, "b.png")):
        msg = str(exc.value)
        assert "permission denied" in msg and str(locked / path) in msg, msg
        assert "403" not in msg and "credentials" not in msg
        assert exc.value.kind == "access_denied"
