"""Compare-and-swap of one small object: replace (or delete) it only while it still holds the
bytes the caller last saw. The output's lock is renewed, taken over and released this way, so a
renewal and a takeover can never overwrite each other.

- Local disk: an exclusive flock on the current file, held while its bytes are compared and the
  new file is renamed over it; a waiter that wakes on a file already replaced starts again.
- S3: a conditional PUT / DELETE with `If-Match` on the ETag read before the compare.
- Other filesystems: write, then read back; a mismatch counts as lost."""

from __future__ import annotations

import contextlib
import fcntl
import os

from batch_inpaint.storage.local import delete_local, write_local

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def swap_local(path: str, expected: bytes, data: bytes | None, root: str | None = None) -> bool:
    """Replace the file with `data` (delete it when None) if it holds `expected`; False if it
    holds anything else or is gone."""
    for _ in range(20):  # each round: the file was replaced while we waited for its flock
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                continue
            if _read_fd(fd) != expected:
                return False
            if data is None:
                delete_local(path, root)
            else:
                write_local(path, data, True, root)
            return True
        finally:
            os.close(fd)  # releases the flock
    return False


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def swap_s3(fs, path: str, expected: bytes, data: bytes | None) -> bool:
    """s3fs: the ETag first, then the bytes; the write or delete is conditional on that ETag,
    so a change after the ETag was read makes it fail (False), never clobber."""
    bucket, key, _ = fs.split_path(path)
    try:
        etag = fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
        current = fs.cat_file(path)
    except FileNotFoundError:
        return False
    if current != expected:
        return False
    try:
        if data is None:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
        else:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)
    except (OSError, FileNotFoundError) as exc:
        if isinstance(exc, FileNotFoundError) or _precondition_failed(exc):
            return False
        raise
    finally:
        with contextlib.suppress(Exception):
            fs.invalidate_cache(path)
    return True


def _precondition_failed(exc: BaseException) -> bool:
    """S3's 412 PreconditionFailed (the ETag moved) or 409 ConditionalRequestConflict (another
    conditional write raced ours), as s3fs passes them on."""
    for err in (exc, exc.__cause__, exc.__context__):
        response = getattr(err, "response", None) or {}
        code = str((response.get("Error") or {}).get("Code", ""))
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return True
    return "PreconditionFailed" in str(exc) or "ConditionalRequestConflict" in str(exc)


def swap_other(fs, path: str, expected: bytes, data: bytes | None) -> bool:
    """Filesystems with no conditional write: compare, write, read back."""
    try:
        if fs.cat_file(path) != expected:
            return False
    except FileNotFoundError:
        return False
    if data is None:
        fs.rm_file(path)
        return True
    fs.pipe_file(path, data)
    try:
        return fs.cat_file(path) == data
    except FileNotFoundError:
        return False
