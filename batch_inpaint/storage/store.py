"""The one storage layer: URI policy, retries with backoff, idempotent writes keyed by row id,
fsspec for object bytes and pyarrow filesystems for Parquet. Secrets never leave StorageOptions."""

from __future__ import annotations

import logging
import os
import random
import tempfile
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
)
from batch_inpaint.storage.http_get import http_get
from batch_inpaint.storage.options import StorageOptions
from batch_inpaint.storage.uri import check_uri, is_local, local_path, redact_uri, uri_scheme

log = logging.getLogger(__name__)
T = TypeVar("T")


def _is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, connection resets and timeouts: worth another attempt."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (FileNotFoundError, PermissionError, InpaintError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(response.get("Error", {}).get("Code", ""))
            if status == 429 or status >= 500 or code in _TRANSIENT_CODES:
                return True
        if isinstance(getattr(e, "reason", None), (ConnectionError, TimeoutError)):
            return True  # urllib's URLError
        status = getattr(e, "status", None)  # aiohttp / urllib http errors
        if isinstance(status, int) and (status == 429 or status >= 500):
            return True
        name = type(e).__name__
        if name in _TRANSIENT_NAMES:
            return True
        e = e.__cause__ or e.__context__
    return False


_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
}  # fmt: skip
_TRANSIENT_NAMES = {
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ResponseStreamingError", "IncompleteRead", "ClientPayloadError", "ServerDisconnectedError",
    "ClientConnectorError", "ClientOSError", "FSTimeoutError", "ResponseParserError",
}  # fmt: skip


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
                    pa_fs = _pyarrow_s3(self.options)
                else:
                    pa_fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
                self._pa[scheme] = pa_fs
        return pa_fs, path

    # --- operations -------------------------------------------------------------------------
    def _retry(self, what: str, uri: str, fn: Callable[[], T]) -> T:
        o = self.options
        for attempt in range(1, o.retries + 1):
            try:
                return fn()
            except InpaintError:
                raise
            except Exception as exc:
                shown = redact_uri(uri)
                if isinstance(exc, FileNotFoundError):
                    raise NotFoundError(f"{shown}: not found (404) while {what}") from exc
                if isinstance(exc, PermissionError):
                    raise AccessDeniedError(
                        f"{shown}: access denied (403) while {what}; check the credentials "
                        f"(profile {o.profile or 'default'}) and the bucket policy"
                    ) from exc
                if not _is_transient(exc):
                    raise StorageError(f"{shown}: {what} failed: {exc}") from exc
                if attempt == o.retries:
                    raise StorageError(
                        f"{shown}: {what} failed after {attempt} attempts (transient error; "
                        f"raise storage retries to wait longer): {exc}"
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

    def write_bytes(self, uri: str, data: bytes, *, overwrite: bool = True) -> bool:
        """Write the object at once: readers see the old object, the whole new one, or none.
        overwrite=False writes only if absent (exactly once) and returns False if it existed."""
        fs, path = self.filesystem(uri)
        if is_local(uri):
            return self._retry("writing", uri, lambda: _write_local(path, data, overwrite))
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

    def exists(self, uri: str) -> bool:
        fs, path = self.filesystem(uri)
        return bool(self._retry("checking", uri, lambda: fs.exists(path)))

    def size(self, uri: str) -> int:
        fs, path = self.filesystem(uri)
        return int(self._retry("checking", uri, lambda: fs.size(path)))

    def delete(self, uri: str) -> None:
        fs, path = self.filesystem(uri)
        self._retry("deleting", uri, lambda: fs.rm_file(path) if fs.exists(path) else None)

    def download(self, uri: str, dest: str | os.PathLike) -> None:
        """Copy one object to a local file (streamed, not held in memory)."""
        fs, path = self.filesystem(uri)
        self._retry("downloading", uri, lambda: fs.get_file(path, os.fspath(dest)))

    def list(self, prefix: str, *, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Every object under a prefix (recursive, paginated), as sorted URIs of the same kind
        as the prefix; suffixes filters by file extension, case-insensitive."""
        fs, path = self.filesystem(prefix)
        if is_local(prefix) and not os.path.isdir(path):
            raise NotFoundError(f"{redact_uri(prefix)}: no such directory")
        root = path.rstrip("/")
        found = self._retry("listing", prefix, lambda: fs.find(root, withdirs=False))
        out = []
        for p in found:
            if suffixes and not p.lower().endswith(tuple(s.lower() for s in suffixes)):
                continue
            if not p.startswith(root + "/"):
                continue  # 'images2/x' is not under 'images'
            out.append(p if is_local(prefix) else prefix.rstrip("/") + p[len(root) :])
        return sorted(out)


def _write_local(path: str, data: bytes, overwrite: bool) -> bool:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic create-if-absent
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _pyarrow_s3(o: StorageOptions) -> Any:
    from urllib.parse import urlsplit

    import pyarrow.fs as pafs

    kw: dict[str, Any] = {
        "anonymous": o.anon,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=o.retries),
        "request_timeout": o.timeout_s,
        "connect_timeout": min(o.timeout_s, 10),
    }
    if o.endpoint_url:
        u = urlsplit(o.endpoint_url)
        kw["endpoint_override"] = u.netloc + u.path.rstrip("/")
        kw["scheme"] = u.scheme
        kw["region"] = o.region or "us-east-1"
    elif o.region:
        kw["region"] = o.region
    if o.key:
        kw.update(access_key=o.key, secret_key=o.secret, session_token=o.token)
    elif o.profile and not o.anon:  # pyarrow has no profile argument: resolve it with botocore
        import botocore.session

        creds = botocore.session.Session(profile=o.profile).get_credentials()
        if creds is None:
            raise ConfigError(f"AWS profile {o.profile!r} has no credentials")
        frozen = creds.get_frozen_credentials()
        kw.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            kw["session_token"] = frozen.token
    return pafs.S3FileSystem(**kw)


def pyarrow_filesystem(uri: str, options: StorageOptions | None = None) -> tuple[Any, str]:
    """(pyarrow.fs.FileSystem, path) for a URI; see Storage.pyarrow_filesystem."""
    return Storage(options).pyarrow_filesystem(uri)
