"""Whole-object GET, PUT and delete on s3:// through one botocore client per process and options.

s3fs runs every call as a coroutine on its own event-loop thread (a hand-off each way) and HEADs
an object before each whole GET (to decide on a concurrent ranged download): per 512² row (image,
mask, output) that was 12-13 ms of CPU in the job's process against 6 ms for the same requests
through a plain client (docs/benchmarks.md, c2 from S3). The hot path (Storage.read_bytes,
write_bytes, delete) comes here; listings, sizes, downloads, the lock's compare-and-swap and
pyarrow keep s3fs / pyarrow. The client makes one attempt per call: retries stay Storage's, and
errors are turned into the same Python errors s3fs raises, so Storage reads them alike."""

from __future__ import annotations

import os
import threading
from typing import Any

PUT_MAX = 100 * 2**20  # bigger writes: s3fs's multipart upload (one PUT holds at most 5 GB)
POOL = 32  # connections per client: the local executor's threads, the lock's renewal, the driver
_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"}
_DENIED = {
    "AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "AllAccessDisabled", "AccountProblem", "InvalidObjectState",
}  # fmt: skip
_CLIENTS: dict[tuple[int, Any], Any] = {}
_LOCK = threading.Lock()


def client(options) -> Any:
    """This process's client for `options` (StorageOptions, hashable): made once, shared by every
    Storage and thread (botocore clients are thread-safe); a forked child makes its own."""
    key = (os.getpid(), options)
    found = _CLIENTS.get(key)
    if found is None:
        with _LOCK:
            found = _CLIENTS.get(key)
            if found is None:
                found = _CLIENTS[key] = _make(options)
    return found


def _make(o) -> Any:
    import botocore.session
    from botocore.config import Config

    config: dict[str, Any] = {
        "retries": {"total_max_attempts": 1, "mode": "standard"},  # ours: counted, logged
        "connect_timeout": min(o.timeout_s, 10),
        "read_timeout": o.timeout_s,
        "max_pool_connections": POOL,
    }
    if o.anon:
        from botocore import UNSIGNED

        config["signature_version"] = UNSIGNED
    kwargs: dict[str, Any] = {"region_name": o.region, "config": Config(**config)}
    if o.endpoint_url:
        kwargs["endpoint_url"] = o.endpoint_url
    if o.key:
        kwargs.update(aws_access_key_id=o.key, aws_secret_access_key=o.secret,
                      aws_session_token=o.token)  # fmt: skip
    return botocore.session.Session(profile=o.profile).create_client("s3", **kwargs)


def split(uri: str) -> tuple[str, str]:
    """(bucket, key) of s3://bucket/key, as s3fs splits it (no version ids: not version-aware)."""
    bucket, _, key = uri.split("://", 1)[1].rstrip("/").partition("/")
    return bucket, key


def plain_range(start: int | None, end: int | None) -> bool:
    """Whether a read is a whole object or a plain [start, end) range (others go to s3fs)."""
    if start is not None and start < 0 or end is not None and end < 0:
        return False
    return end is None or end > (start or 0)


def get(options, uri: str, start: int | None = None, end: int | None = None) -> bytes:
    """The object's bytes (or bytes [start, end)); a range of an empty object is b""."""
    bucket, key = split(uri)
    kwargs = {}
    if start is not None or end is not None:
        kwargs["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
    try:
        body = _call(client(options).get_object, Bucket=bucket, Key=key, **kwargs)["Body"]
    except InvalidRangeError:  # S3 answers any range of an empty object with 416
        if start or head(options, uri)["ContentLength"]:
            raise
        return b""
    try:
        return body.read()
    finally:
        body.close()


def head(options, uri: str) -> dict:
    bucket, key = split(uri)
    return _call(client(options).head_object, Bucket=bucket, Key=key)


def put(options, uri: str, data: bytes, overwrite: bool) -> bool:
    """One PUT: S3 shows the old object or the whole new one. overwrite=False: only if absent
    (If-None-Match), False when an object was there."""
    bucket, key = split(uri)
    match = {} if overwrite else {"IfNoneMatch": "*"}
    try:
        _call(client(options).put_object, Bucket=bucket, Key=key, Body=data, **match)
    except FileExistsError:
        return False
    return True


def delete(options, uri: str) -> None:
    """Remove the object if there is one: one DELETE, which S3 answers alike for a missing key
    (no HEAD first: the job deletes only what it wrote, and on a versioned bucket a delete is a
    marker either way)."""
    bucket, key = split(uri)
    _call(client(options).delete_object, Bucket=bucket, Key=key)


def _call(method, **kwargs) -> Any:
    """method(**kwargs); an S3 error reply as s3fs turns it: missing -> FileNotFoundError, denied
    -> PermissionError, an If-None-Match that found an object -> FileExistsError (the reply is
    the cause); anything else (5xx, throttling, connection errors) as botocore raised it, for
    transient.is_transient to judge."""
    from botocore.exceptions import ClientError

    try:
        return method(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error") or {}
        code = str(error.get("Code", ""))
        text = f"{code}: {error.get('Message') or exc}"
        if code in _MISSING:
            raise FileNotFoundError(text) from exc
        if code in _DENIED:
            raise PermissionError(f"AccessDenied ({text})") from exc
        if code in ("PreconditionFailed", "412") and "IfNoneMatch" in kwargs:
            raise FileExistsError(text) from exc
        if code == "InvalidRange":
            raise InvalidRangeError(text) from exc
        raise


class InvalidRangeError(OSError):
    """416: the range starts past the object's end."""
