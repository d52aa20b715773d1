"""Error types. Every error a row can hit has a short `kind` that lands in the result row."""

from __future__ import annotations


class InpaintError(Exception):
    """Base of every error batch-inpaint raises on purpose; `kind` is a stable short name."""

    kind = "error"

    def __init__(self, message: str, *, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class ConfigError(InpaintError, ValueError):
    """A bad option or argument; the message names the field."""

    kind = "config"


class DecodeError(InpaintError):
    """Bytes that are not a usable image: empty, truncated, unknown format, bomb, ..."""

    kind = "decode"


class MaskError(InpaintError):
    """A mask that can't be built or doesn't fit its image."""

    kind = "mask"


class SizeMismatchError(MaskError):
    kind = "size_mismatch"


class StorageError(InpaintError):
    kind = "storage"


class NotFoundError(StorageError):
    kind = "not_found"


class AccessDeniedError(StorageError):
    kind = "access_denied"


class UriRejectedError(StorageError):
    """A URI that the URI policy refuses (scheme, '::' chaining, bucket not allowed)."""

    kind = "uri_rejected"


class ManifestError(InpaintError):
    kind = "manifest"


class ModelError(InpaintError):
    kind = "model"


def error_kind(exc: BaseException) -> str:
    """The `kind` recorded for any exception; unexpected ones are 'internal'."""
    return exc.kind if isinstance(exc, InpaintError) else "internal"
