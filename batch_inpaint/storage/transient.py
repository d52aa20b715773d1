"""Which storage errors are transient (worth another attempt, and redone by the next run when the
attempts run out): throttling and 5xx replies, reset or refused connections, timeouts and a full
disk. Not found, denied and every other error are not."""

from __future__ import annotations

import errno

from batch_inpaint.errors import InpaintError


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, connection resets, timeouts and a full disk: worth another attempt.
    Walks the cause chain: s3fs turns a 503 SlowDown into OSError(EBUSY) caused by botocore's
    ClientError, aiobotocore a reset into EndpointConnectionError caused by aiohttp's."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (FileNotFoundError, PermissionError, InpaintError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if isinstance(e, OSError) and e.errno in _FULL_DISK:
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


_FULL_DISK = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
    "ConditionalRequestConflict",  # 409: another conditional write to the key is in flight
}  # fmt: skip
_TRANSIENT_NAMES = {
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ResponseStreamingError", "IncompleteRead", "ClientPayloadError", "ServerDisconnectedError",
    "ClientConnectorError", "ClientOSError", "FSTimeoutError", "ResponseParserError",
    "IncompleteReadError", "FlexibleChecksumError",  # botocore: a short or altered body
}  # fmt: skip
