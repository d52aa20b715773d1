"""Whether object storage can be signed for at all, asked once before any row is read: a missing
credential is one message naming the ways to give one, not one "Unable to locate credentials"
per row and object."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from batch_inpaint.errors import AccessDeniedError
from batch_inpaint.storage.uri import redact_uri, uri_scheme

WAYS = (
    "give them by the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), a profile "
    "(--profile NAME, or AWS_PROFILE, from ~/.aws/credentials), or an instance role (EC2, ECS, "
    "EKS); for a public bucket, --anon (anonymous: unsigned requests)"
)


def missing_credentials(options: Any, uris: Iterable[str]) -> str | None:
    """The message when some of `uris` is on S3, requests are signed (not `anon`) and the AWS
    chain (options' keys, environment, profile, instance role) finds no credential; else None."""
    s3 = next((u for u in uris if u and uri_scheme(str(u)) in ("s3", "s3a")), None)
    if s3 is None or options.anon or options.key:
        return None
    import botocore.exceptions
    import botocore.session

    try:
        creds = botocore.session.Session(profile=options.profile).get_credentials()
    except botocore.exceptions.ProfileNotFound:
        return (f"AWS profile {options.profile!r} is not in ~/.aws/config or "
                f"~/.aws/credentials (reading {redact_uri(str(s3))}); {WAYS}")  # fmt: skip
    if creds is not None:
        return None
    return f"no S3 credentials found for {redact_uri(str(s3))}: {WAYS}"


def check_credentials(options: Any, uris: Iterable[str]) -> None:
    """AccessDeniedError (a config error: exit 2) with missing_credentials' message."""
    why = missing_credentials(options, uris)
    if why:
        raise AccessDeniedError(why)
