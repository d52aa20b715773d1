"""pyarrow's S3 filesystem from StorageOptions, for Parquet reads and writes (Ray Data's
read_parquet among them). It retries on its own (the AWS SDK's standard strategy: throttling, 5xx,
resets and timeouts, with backoff) `options.retries` attempts in all, also after pickling: pyarrow
drops the retry strategy when an S3FileSystem is pickled, and Ray ships filesystems to its workers
pickled, so the subclass here carries it across."""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs

from batch_inpaint.errors import ConfigError
from batch_inpaint.storage.options import StorageOptions


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow.fs.S3FileSystem that keeps its retry strategy's attempts when pickled."""

    def __init__(self, *, max_attempts: int, **kwargs: Any) -> None:
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts)
        super().__init__(**kwargs)
        self.max_attempts = max_attempts

    def __reduce__(self) -> tuple[Any, ...]:
        _, (kwargs,) = super().__reduce__()
        return _rebuild, (self.max_attempts, kwargs)


def _rebuild(max_attempts: int, kwargs: dict[str, Any]) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(max_attempts=max_attempts, **kwargs)


def pyarrow_s3(o: StorageOptions) -> RetryingS3FileSystem:
    from urllib.parse import urlsplit

    kw: dict[str, Any] = {
        "anonymous": o.anon,
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
    return RetryingS3FileSystem(max_attempts=o.retries, **kw)
