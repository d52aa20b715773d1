"""Error types. Every error a row can hit has a short `kind` that lands in the result row."""

from __future__ import annotations

from batch_inpaint.vocab import ErrorKind


class InpaintError(Exception):
    """Base of every error batch-inpaint raises on purpose; `kind` is a stable short name."""

    kind = "error"

    def __init__(self, message: str, *, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class ConfigError(InpaintError, ValueError):
    """A bad option or argument; the message names the field."""

    kind = ErrorKind.CONFIG.value


class DecodeError(InpaintError):
    """Bytes that are not a usable image: empty, truncated, unknown format, bomb, ..."""

    kind = ErrorKind.DECODE.value


class MaskError(InpaintError):
    """A mask that can't be built or doesn't fit its image."""

    kind = ErrorKind.MASK.value


class SizeMismatchError(MaskError):
    kind = ErrorKind.SIZE_MISMATCH.value


class StorageError(InpaintError):
    kind = ErrorKind.STORAGE.value


class TransientStorageError(StorageError):
    """Storage that failed for a passing reason (throttling/5xx, a reset connection, a timeout, a
    full disk) after every configured attempt: the row is not at fault, and the next run redoes it
    by default."""

    kind = ErrorKind.STORAGE_TRANSIENT.value


class NotFoundError(StorageError):
    kind = ErrorKind.NOT_FOUND.value


class AccessDeniedError(StorageError):
    kind = ErrorKind.ACCESS_DENIED.value


class UriRejectedError(StorageError):
    """A URI that the URI policy refuses (scheme, '::' chaining, bucket not allowed)."""

    kind = ErrorKind.URI_REJECTED.value


class ManifestError(InpaintError):
    kind = ErrorKind.MANIFEST.value


class ModelError(InpaintError):
    kind = ErrorKind.MODEL.value


def error_kind(exc: BaseException) -> str:
    """The `kind` recorded for any exception; unexpected ones are 'internal'."""
    return exc.kind if isinstance(exc, InpaintError) else ErrorKind.INTERNAL.value
