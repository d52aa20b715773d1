"""Where and how to reach object storage; secrets stay inside and never reach outputs or logs."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from batch_inpaint.errors import ConfigError
from batch_inpaint.storage.uri import redact_uri, uri_scheme

SECRET_FIELDS = ("key", "secret", "token")


@dataclass(frozen=True, repr=False)
class StorageOptions:
    """Where and how to reach object storage. Keys are optional: by default the standard AWS chain
    (env vars, ~/.aws, instance roles) supplies them, so they never sit in a config or an output."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 (MinIO, moto, R2, ...)
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    allow_http: bool = False  # allow http(s):// URIs for images and masks
    allowed_buckets: tuple[str, ...] | None = None  # None: any bucket
    # attempts in all for a transient error, the first included: 7 with a 0.5 s first wait ride
    # out 13-25 s of throttling or resets (tests/test_job_storage_storm.py)
    retries: int = 7
    backoff_s: float = 0.5  # first wait; doubles each attempt, with jitter
    max_backoff_s: float = 10.0
    timeout_s: float = 60.0
    key: str | None = None
    secret: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.allowed_buckets is not None:
            buckets = self.allowed_buckets
            if isinstance(buckets, str):
                buckets = [b for b in buckets.split(",") if b.strip()]
            object.__setattr__(self, "allowed_buckets", tuple(b.strip() for b in buckets))
        if not isinstance(self.retries, int) or not 1 <= self.retries <= 100:
            raise ConfigError(
                f"storage retries must be an integer in [1, 100], got {self.retries!r}"
            )
        if self.backoff_s < 0 or self.max_backoff_s < 0 or self.timeout_s <= 0:
            raise ConfigError("storage backoff_s/max_backoff_s must be >= 0 and timeout_s > 0")
        if self.endpoint_url and uri_scheme(self.endpoint_url) not in ("http", "https"):
            raise ConfigError(f"endpoint_url must start with http:// or https://, got "
                              f"{redact_uri(self.endpoint_url)!r}")  # fmt: skip

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> StorageOptions:
        """Options from the standard AWS variables (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
        AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE); non-None overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            "profile": env.get("AWS_PROFILE") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> StorageOptions:
        return dataclasses.replace(self, **changes)

    def to_public_dict(self) -> dict[str, Any]:
        """Every field except secrets: safe to write into run metadata and logs."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in SECRET_FIELDS:
            out.pop(name)
        if out["endpoint_url"]:
            out["endpoint_url"] = redact_uri(out["endpoint_url"])
        if out["allowed_buckets"] is not None:
            out["allowed_buckets"] = list(out["allowed_buckets"])
        return out

    def redacted(self) -> dict[str, Any]:
        """Like to_public_dict, but shows which secrets are set, as '***'."""
        out = self.to_public_dict()
        out.update({n: "***" for n in SECRET_FIELDS if getattr(self, n)})
        return out

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"StorageOptions({body})"
