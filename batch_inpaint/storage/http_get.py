"""http(s) reads (only with allow_http) that hold to the URI policy on every hop: each redirect
target is checked again, and no host may resolve to a link-local or metadata address."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from batch_inpaint.errors import UriRejectedError
from batch_inpaint.storage.uri import blocked_host, redact_uri

MAX_REDIRECTS = 5


def check_resolved(uri: str) -> None:
    """UriRejectedError if the URI's host resolves to a blocked (link-local/metadata) address."""
    host = urlsplit(uri).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return  # the request itself will fail with a clear connection error
    for info in infos:
        if blocked_host(info[4][0].split("%")[0]):
            raise UriRejectedError(
                f"{redact_uri(uri)!r}: host {host!r} resolves to a link-local/metadata address"
            )


def http_get(
    uri: str, check: Callable[[str], str], timeout: float, start: int | None = None,
    end: int | None = None,
) -> bytes:  # fmt: skip
    """GET the URI's bytes (or the range [start, end)); 404/403 become FileNotFoundError/
    PermissionError, other statuses urllib's HTTPError (5xx and 429 count as transient)."""

    class Guard(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS

        def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: N802
            check(newurl)
            check_resolved(newurl)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    check_resolved(uri)
    request = urllib.request.Request(uri, headers={"User-Agent": "batch-inpaint"})
    if start is not None or end is not None:
        last = "" if end is None else str(end - 1)
        request.add_header("Range", f"bytes={start or 0}-{last}")
    opener = urllib.request.build_opener(Guard)
    try:
        with opener.open(request, timeout=timeout) as response:
            data = response.read()
            if response.status == 200 and (start or end is not None):
                data = data[start or 0 : end]  # the server ignored the range
            return data
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(f"HTTP 404 for {redact_uri(uri)}") from exc
        if exc.code in (401, 403):
            raise PermissionError(f"HTTP {exc.code} for {redact_uri(uri)}") from exc
        if exc.code == 416:
            return b""
        raise
