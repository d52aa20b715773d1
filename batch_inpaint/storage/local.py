"""Local-disk writes and deletes: atomic (temp file + rename), ordinary modes (0666 & ~umask, as any
program's files) and, under a root, confined: no write or delete follows a symbolic link planted
between the root and the target. Folders are walked by file descriptor with O_NOFOLLOW, so a link
swapped in after a check can't redirect the write either."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from batch_inpaint.errors import StorageError

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
FILE_MODE = 0o666  # the kernel applies the umask, as for any file a program creates


def relative_parts(path: str, root: str) -> list[str]:
    """The components of `path` below `root` (both absolute, normalised); StorageError if `path`
    does not lie strictly inside `root`."""
    root = root.rstrip("/") or "/"
    if path == root or os.path.commonpath([path, root]) != root:
        raise StorageError(
            f"{path}: not inside the output {root}; batch-inpaint writes and deletes only below it"
        )
    return [p for p in os.path.relpath(path, root).split(os.sep) if p]


def _refuse_link(dir_fd: int, name: str, shown: str, target: str, root: str) -> None:
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        dest = os.readlink(name, dir_fd=dir_fd)
        raise StorageError(
            f"{target}: refusing to write through the symbolic link {shown} -> {dest}: writes "
            f"under the output {root} never follow links (it could point outside the output); "
            "remove the link or choose another output"
        )


def open_parent(path: str, root: str | None, *, create: bool) -> int | None:
    """A descriptor of `path`'s folder, creating missing folders when `create`. With a root, every
    component below it is opened with O_NOFOLLOW and a symbolic link is refused (StorageError
    naming it). None when the folder is missing and `create` is False."""
    parent = os.path.dirname(path)
    if root is None:
        if create:
            os.makedirs(parent, exist_ok=True)
        try:
            return os.open(parent, _DIR_FLAGS)
        except FileNotFoundError:
            if create:
                raise
            return None
    parts = relative_parts(path, root)
    if create:
        os.makedirs(root, exist_ok=True)  # the root itself may be a link: the user's choice
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise
        return None
    shown = root.rstrip("/")
    try:
        for name in parts[:-1]:
            shown = f"{shown}/{name}"
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=fd)
            try:
                sub = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                _refuse_link(fd, name, shown, path, root)
                if isinstance(exc, FileNotFoundError) and not create:
                    os.close(fd)
                    return None
                raise
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_local(path: str, data: bytes, overwrite: bool, root: str | None = None) -> bool:
    """Write `data` to `path` at once (temp file, fsync, rename); overwrite=False creates only if
    absent and returns False if the file existed. With `root`, confined to it (see open_parent):
    an existing link at the target itself is refused too, never replaced or followed."""
    dir_fd = open_parent(path, root, create=True)
    assert dir_fd is not None
    name = os.path.basename(path)
    try:
        if root is not None:
            _refuse_link(dir_fd, name, path, path, root)
        for _ in range(100):
            tmp = f".{name[:100]}.{secrets.token_hex(6)}.tmp"
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC
                fd = os.open(tmp, flags, FILE_MODE, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 random names taken
            raise FileExistsError(errno.EEXIST, "no free temporary name", path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                return True
            try:  # atomic create-if-absent
                os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def delete_local(path: str, root: str | None = None) -> None:
    """Remove the file if it exists. With `root`, never through a linked folder below it (a link
    at the target itself is removed, not followed)."""
    dir_fd = open_parent(path, root, create=False)
    if dir_fd is None:
        return
    try:
        os.unlink(os.path.basename(path), dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dir_fd)


def is_dir(path: str) -> bool:
    """os.path.isdir, except that a folder we may not look into raises PermissionError instead
    of passing for 'not there' (which would make resume redo finished work)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def stat_exists(path: str) -> bool:
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def walk_local(root: str) -> list[str]:
    """Every file under a local folder; an unreadable folder raises (PermissionError) instead of
    being skipped as fsspec's find does, so a listing never reports less than is there."""

    def fail(exc: OSError) -> None:
        raise exc

    return [os.path.join(d, f) for d, _, files in os.walk(root, onerror=fail) for f in files]
