"""The one storage layer: URI policy, retries with backoff, idempotent writes keyed by row id,
fsspec for object bytes and pyarrow filesystems for Parquet. Secrets never leave StorageOptions."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from batch_inpaint.errors import (
    AccessDeniedError,
    ConfigError,
    InpaintError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from batch_inpaint.storage.http_get import http_get
from batch_inpaint.storage.local import delete_local, is_dir, stat_exists, walk_local, write_local
from batch_inpaint.storage.options import StorageOptions
from batch_inpaint.storage.s3_objects import PUT_MAX, plain_range
from batch_inpaint.storage.s3_objects import delete as s3_delete
from batch_inpaint.storage.s3_objects import get as s3_get
from batch_inpaint.storage.s3_objects import put as s3_put
from batch_inpaint.storage.transient import is_transient
from batch_inpaint.storage.uri import check_uri, is_local, local_path, redact_uri, uri_scheme

log = logging.getLogger(__name__)
T = TypeVar("T")


class Storage:
    """Reads, writes and lists object bytes under the URI policy, with retries and clear errors.
    Picklable: only the options travel; filesystems are made lazily on each worker."""

    def __init__(self, options: StorageOptions | None = None):
        self.options = options if options is not None else StorageOptions.from_env()
        self._fs: dict[str, Any] = {}
        self._pa: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["options"])

    def __repr__(self) -> str:
        return f"Storage({self.options!r})"

    def check(self, uri: str) -> str:
        return check_uri(uri, self.options)

    # --- filesystems ------------------------------------------------------------------------
    def filesystem(self, uri: str) -> tuple[Any, str]:
        """(fsspec filesystem, its path) for an allowed URI."""
        uri = self.check(uri)
        scheme = uri_scheme(uri)
        if scheme in ("", "file"):
            scheme = "file"
        with self._lock:
            fs = self._fs.get(scheme)
            if fs is None:
                fs = self._fs[scheme] = self._make_fs(scheme)
        if scheme == "file":
            return fs, local_path(uri)
        return fs, fs._strip_protocol(uri)

    def _make_fs(self, scheme: str) -> Any:
        import fsspec

        o = self.options
        if scheme == "s3":
            client: dict[str, Any] = {}
            if o.endpoint_url:
                client["endpoint_url"] = o.endpoint_url
            if o.region:
                client["region_name"] = o.region
            kwargs: dict[str, Any] = {
                "anon": o.anon,
                "client_kwargs": client,
                # retries are ours (counted, logged, configurable): switch off botocore's and s3fs's
                "config_kwargs": {
                    "retries": {"total_max_attempts": 1, "mode": "standard"},
                    "connect_timeout": min(o.timeout_s, 10),
                    "read_timeout": o.timeout_s,
                },
                "use_listings_cache": False,
                "skip_instance_cache": True,
            }
            if o.profile:
                kwargs["profile"] = o.profile
            if o.key:
                kwargs.update(key=o.key, secret=o.secret, token=o.token)
            fs = fsspec.filesystem("s3", **kwargs)
            fs.retries = 1  # s3fs's own retry loop (a class attribute)
            return fs
        if scheme in ("http", "https"):
            raise StorageError(
                f"{scheme}:// URIs can only be read (read_bytes), not listed/written"
            )
        try:
            if scheme == "gs":
                return fsspec.filesystem("gs", token="anon" if o.anon else None)
            return fsspec.filesystem(scheme)
        except ImportError as exc:
            raise ConfigError(f"{scheme}:// URIs need an extra package: {exc}") from exc

    def pyarrow_filesystem(self, uri: str) -> tuple[Any, str]:
        """(pyarrow.fs.FileSystem, path) for Parquet reads and writes, e.g. by Ray Data."""
        import pyarrow.fs as pafs

        uri = self.check(uri)
        scheme = uri_scheme(uri) or "file"
        if scheme == "file":
            return pafs.LocalFileSystem(), local_path(uri)
        fs, path = self.filesystem(uri)
        with self._lock:
            pa_fs = self._pa.get(scheme)
            if pa_fs is None:
                if scheme == "s3":
                    from batch_inpaint.storage.arrow import pyarrow_s3  # pyarrow only when used

                    pa_fs = pyarrow_s3(self.options)
                else:
                    pa_fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
                self._pa[scheme] = pa_fs
        return pa_fs, path

    # --- operations -------------------------------------------------------------------------
    def _retry(self, what: str, uri: str, fn: Callable[[], T]) -> T:
        """fn() with the retry policy: transient errors (see transient.is_transient) are retried with
        exponential backoff and jitter, `retries` attempts in all, then TransientStorageError
        (kind storage_transient); 404 -> NotFoundError, 403 -> AccessDeniedError and anything
        else -> StorageError at once."""
        o = self.options
        for attempt in range(1, o.retries + 1):
            try:
                return fn()
            except InpaintError:
                raise
            except Exception as exc:
                shown = redact_uri(uri)
                missing_or_denied = access_error(uri, exc, what, o.profile)
                if missing_or_denied is not None:
                    raise missing_or_denied from exc
                if not is_transient(exc):
                    raise StorageError(f"{shown}: {what} failed: {exc}") from exc
                if attempt == o.retries:
                    raise TransientStorageError(
                        f"{shown}: {what} failed after {attempt} attempts with a transient error "
                        f"({exc}); the next run retries it (raise storage retries to wait "
                        "longer now)"
                    ) from exc
                wait = min(o.max_backoff_s, o.backoff_s * 2 ** (attempt - 1))
                wait *= 0.5 + random.random() / 2
                log.warning("%s: %s: transient error, attempt %d/%d, retrying in %.2fs: %s",
                            shown, what, attempt, o.retries, wait, exc)  # fmt: skip
                time.sleep(wait)
        raise AssertionError("unreachable")

    def read_bytes(self, uri: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes (or bytes [start, end)); NotFoundError / AccessDeniedError name it."""
        if uri_scheme(uri) in ("http", "https"):
            self.check(uri)
            timeout = self.options.timeout_s
            return self._retry(
                "reading", uri, lambda: http_get(uri, self.check, timeout, start, end)
            )
        if uri_scheme(uri) == "s3" and plain_range(start, end):
            self.check(uri)  # one GET through this process's client: no s3fs, no HEAD first
            return self._retry("reading", uri, lambda: s3_get(self.options, uri, start, end))
        fs, path = self.filesystem(uri)
        if is_local(uri) and os.path.isdir(path):
            raise NotFoundError(f"{redact_uri(uri)}: is a directory, not an object")

        def read() -> bytes:
            try:
                return fs.cat_file(path, start=start, end=end)
            except OSError as exc:  # S3 answers a range on an empty object with 416
                if start and start > 0 or "range" not in str(exc).lower() or fs.size(path):
                    raise
                return b""

        return self._retry("reading", uri, read)

    def write_bytes(
        self, uri: str, data: bytes, *, overwrite: bool = True, root: str | None = None
    ) -> bool:
        """Write the object at once: readers see the old object, the whole new one, or none.
        overwrite=False writes only if absent (exactly once) and returns False if it existed.
        root (e.g. the job's output): the URI must lie below it, and on local disk no folder
        between root and the target, nor the target, may be a symbolic link (StorageError naming
        the link; nothing is written). Local files get mode 0666 & ~umask."""
        if uri_scheme(uri) == "s3" and len(data) <= PUT_MAX:
            self.check(uri)
            self._root(uri, root)  # one PUT (If-None-Match: * when not overwriting)
            op = lambda: s3_put(self.options, uri, data, overwrite)  # noqa: E731
            return self._retry("writing", uri, op)
        fs, path = self.filesystem(uri)
        confine = self._root(uri, root)
        if is_local(uri):
            return self._retry("writing", uri, lambda: write_local(path, data, overwrite, confine))
        if overwrite:
            self._retry("writing", uri, lambda: fs.pipe_file(path, data))
            return True

        def create() -> bool:
            try:
                fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError):  # filesystems without exclusive create
                if fs.exists(path):
                    return False
                fs.pipe_file(path, data)
            return True

        return self._retry("writing", uri, create)

    def swap(
        self, uri: str, expected: bytes, data: bytes | None, *, root: str | None = None
    ) -> bool:
        """Replace the object with `data` (delete it when None) only while it holds `expected`:
        False when it holds anything else or is gone (storage/swap.py says how, per store)."""
        from batch_inpaint.storage.swap import swap_local, swap_other, swap_s3

        fs, path = self.filesystem(uri)
        if is_local(uri):
            confine = self._root(uri, root)
            op = lambda: swap_local(path, expected, data, confine)  # noqa: E731
        elif uri_scheme(uri) == "s3":
            op = lambda: swap_s3(fs, path, expected, data)  # noqa: E731
        else:
            op = lambda: swap_other(fs, path, expected, data)  # noqa: E731
        return bool(self._retry("replacing", uri, op))

    def exists(self, uri: str) -> bool:
        """True if there is an object; a location we may not look into raises (access denied)."""
        fs, path = self.filesystem(uri)
        check = (lambda: stat_exists(path)) if is_local(uri) else (lambda: fs.exists(path))
        return bool(self._retry("checking", uri, check))

    def size(self, uri: str) -> int:
        fs, path = self.filesystem(uri)
        return int(self._retry("checking", uri, lambda: fs.size(path)))

    def delete(self, uri: str, *, root: str | None = None) -> None:
        """Remove the object if it exists; root as for write_bytes (a link at the target itself
        is removed, never followed)."""
        if uri_scheme(uri) == "s3":
            self.check(uri)
            self._root(uri, root)
            self._retry("deleting", uri, lambda: s3_delete(self.options, uri))
            return
        fs, path = self.filesystem(uri)
        confine = self._root(uri, root)
        if is_local(uri):
            self._retry("deleting", uri, lambda: delete_local(path, confine))
            return
        self._retry("deleting", uri, lambda: fs.rm_file(path) if fs.exists(path) else None)

    def _root(self, uri: str, root: str | None) -> str | None:
        """The local root path to confine a write to (None: none or not local); StorageError if
        the URI does not lie below the root."""
        if root is None:
            return None
        self.check(root)
        if is_local(uri) != is_local(root):
            raise StorageError(f"{redact_uri(uri)}: not inside the output {redact_uri(root)}")
        if is_local(uri):
            return local_path(root)
        if not uri.startswith(root.rstrip("/") + "/"):
            raise StorageError(
                f"{redact_uri(uri)}: not inside the output {redact_uri(root)}; batch-inpaint "
                "writes and deletes only below it"
            )
        return None

    def download(self, uri: str, dest: str | os.PathLike) -> None:
        """Copy one object to a local file (streamed, not held in memory)."""
        fs, path = self.filesystem(uri)
        self._retry("downloading", uri, lambda: fs.get_file(path, os.fspath(dest)))

    def list(self, prefix: str, *, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Every object under a prefix (recursive, paginated), as sorted URIs of the same kind
        as the prefix; suffixes filters by file extension, case-insensitive."""
        fs, path = self.filesystem(prefix)
        if is_local(prefix) and not self._retry("listing", prefix, lambda: is_dir(path)):
            raise NotFoundError(f"{redact_uri(prefix)}: no such directory")
        root = path.rstrip("/")
        find = walk_local if is_local(prefix) else lambda r: fs.find(r, withdirs=False)
        found = self._retry("listing", prefix, lambda: find(root))
        out = []
        for p in found:
            if suffixes and not p.lower().endswith(tuple(s.lower() for s in suffixes)):
                continue
            if not p.startswith(root + "/"):
                continue  # 'images2/x' is not under 'images'
            out.append(p if is_local(prefix) else prefix.rstrip("/") + p[len(root) :])
        return sorted(out)


def access_error(
    uri: str, exc: BaseException, what: str, profile: str | None = None
) -> NotFoundError | AccessDeniedError | None:
    """The error an exception from `what` on `uri` means when the object is missing or may not
    be read, worded for where it is (a local path gets no HTTP code); None for anything else.
    Also for pyarrow's errors, which say ACCESS_DENIED or carry errno EACCES."""
    import errno

    shown, local, text = redact_uri(uri), is_local(uri), str(exc)
    if isinstance(exc, FileNotFoundError) or (not local and "NoSuchKey" in text):
        why = "not found (no such file or folder)" if local else "not found (404)"
        return NotFoundError(f"{shown}: {why} while {what}")
    denied = isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES
    if denied or (not local and ("ACCESS_DENIED" in text or "AccessDenied" in text)):
        return AccessDeniedError(
            f"{shown}: permission denied while {what}; check the file's and its folders' "
            "owner and permissions"
            if local
            else f"{shown}: access denied (403) while {what}; check the credentials "
            f"(profile {profile or 'default'}) and the bucket policy"
        )
    return None


def pyarrow_filesystem(uri: str, options: StorageOptions | None = None) -> tuple[Any, str]:
    """(pyarrow.fs.FileSystem, path) for a URI; see Storage.pyarrow_filesystem."""
    return Storage(options).pyarrow_filesystem(uri)
