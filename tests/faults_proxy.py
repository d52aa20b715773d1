"""A fault-injecting HTTP reverse proxy for tests: put it in front of an HTTP endpoint (moto's S3
server in tests/fixtures_s3.py) and point clients at `proxy.url` to see real 503s, slow replies and
reset connections on the wire, as a client of a real object store would.

    proxy = FaultProxy("http://127.0.0.1:5000")          # listens on 127.0.0.1 only
    with proxy.fault("503", seconds=2):                   # a 2 s window of 503 SlowDown
        storage.read_bytes("s3://b/k")                    # retried until the window closes
    with proxy.fault("reset", count=3, methods={"PUT"}):  # the next 3 PUTs: connection reset
        ...
    f = proxy.fault("delay", delay_s=5, seconds=10)       # also usable without `with`
    f.stop()
    proxy.close()

Fault kinds:
  "503"      an S3-style XML error (<Code>SlowDown</Code>) with status 503; "500" (InternalError)
             and any other 4xx/5xx string, e.g. "502", work the same way with a fitting code.
  "reset"    reads the request, then closes the socket abruptly (RST, via SO_LINGER 0): the
             client sees ECONNRESET / a dropped connection, never a reply.
  "truncate" forwards the request, then sends the reply's headers and half its body and closes
             the connection (FIN): the client sees an incomplete read.
  "delay"    waits `delay_s` before forwarding (a slow endpoint; with a short client timeout, a
             timeout).

A fault is active from the moment `fault()` returns until the first of: `seconds` elapsed, `count`
matching requests affected, `stop()` or the end of its `with` block. Without `seconds` and `count`
it lasts until stopped. `methods` (e.g. {"GET", "HEAD"}) and `path` (a regex searched in the
request path, query included) narrow which requests it affects. When several faults match, the
one added first wins. `proxy.requests` counts every request received, `fault.hits` the requests
that fault affected. With the upstream down the proxy answers 502. It is threaded and stdlib-only;
`close()` (or leaving `with FaultProxy(...)`) stops listening and drops open connections.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("reset", "truncate", "delay")
_S3_CODES = {500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout",
             429: "TooManyRequests", 403: "AccessDenied", 404: "NoSuchKey"}  # fmt: skip
# hop-by-hop headers: never forwarded as they are
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-connection", "content-length", "expect"}  # fmt: skip


class Fault:
    """One injected fault; a context manager that stops it on exit."""

    def __init__(self, proxy: FaultProxy, kind: str, *, seconds: float | None,
                 count: int | None, methods: Iterable[str] | None, path: str | None,
                 delay_s: float) -> None:  # fmt: skip
        if kind not in KINDS and not (kind.isdigit() and 400 <= int(kind) <= 599):
            raise ValueError(f"unknown fault kind {kind!r}: use an HTTP status or one of {KINDS}")
        self.proxy = proxy
        self.kind = kind
        self.until = None if seconds is None else time.monotonic() + seconds
        self.count = count
        self.methods = None if methods is None else {m.upper() for m in methods}
        self.path = re.compile(path) if path else None
        self.delay_s = delay_s
        self.hits = 0
        self.stopped = False

    def active(self) -> bool:
        if self.stopped or (self.count is not None and self.hits >= self.count):
            return False
        return self.until is None or time.monotonic() < self.until

    def _claim(self, method: str, path: str) -> bool:
        """Whether this fault takes the request (the proxy's lock is held)."""
        if not self.active():
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.path is not None and not self.path.search(path):
            return False
        self.hits += 1
        return True

    def stop(self) -> None:
        with self.proxy._lock:
            self.stopped = True
            if self in self.proxy._faults:
                self.proxy._faults.remove(self)

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Fault({self.kind!r}, hits={self.hits}, active={self.active()})"


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of `upstream` (http://host:port); see the module doc."""

    def __init__(self, upstream: str, *, timeout_s: float = 60.0) -> None:
        u = urlsplit(upstream)
        if u.scheme != "http" or not u.netloc:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = u.netloc
        self.timeout_s = timeout_s
        self.requests = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def fault(self, kind: str, *, seconds: float | None = None, count: int | None = None,
              methods: Iterable[str] | None = None, path: str | None = None,
              delay_s: float = 1.0) -> Fault:  # fmt: skip
        """Start a fault now (see the module doc); use as a context manager or call .stop()."""
        f = Fault(self, str(kind), seconds=seconds, count=count, methods=methods, path=path,
                  delay_s=delay_s)  # fmt: skip
        with self._lock:
            self._faults.append(f)
        return f

    def clear(self) -> None:
        """Stop every fault."""
        for f in list(self._faults):
            f.stop()

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests += 1
            for f in self._faults:
                if f._claim(method, path):
                    return f
        return None

    def close(self) -> None:
        """Stop listening and drop every open connection (clients see them closed)."""
        self.clear()
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client gone mid-reply (e.g. after its own timeout) is expected here


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            with proxy._lock:
                proxy._conns.add(self.connection)

        def finish(self) -> None:
            with proxy._lock:
                proxy._conns.discard(self.connection)
            super().finish()

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes,
                   send: int | None = None) -> None:  # fmt: skip
            self.send_response(status)
            length = str(len(body))
            for k, v in headers:
                if k.lower() == "content-length" and self.command == "HEAD":
                    length = v  # a HEAD reply has no body but tells the object's size
                elif k.lower() not in _HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body if send is None else body[:send])

        def _reset(self) -> None:
            # linger 0: close() sends RST instead of FIN, as a dropped connection does
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(proxy.upstream, timeout=proxy.timeout_s)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.getheaders(), resp.read()
            finally:
                conn.close()

        def _handle(self) -> None:
            body = self._body()
            fault = proxy._pick(self.command, self.path)
            kind = fault.kind if fault else None
            if kind == "reset":
                return self._reset()
            if kind and kind.isdigit():
                status = int(kind)
                code = _S3_CODES.get(status, "ServiceUnavailable" if status >= 500 else "Error")
                xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                       f"<Message>injected fault: HTTP {status}</Message></Error>").encode()  # fmt: skip
                return self._reply(status, [("Content-Type", "application/xml")], xml)
            if kind == "delay":
                time.sleep(fault.delay_s)
            try:
                status, headers, data = self._forward(body)
            except OSError as exc:  # upstream down: what a load balancer answers
                msg = f"<Error><Code>BadGateway</Code><Message>{exc}</Message></Error>".encode()
                return self._reply(502, [("Content-Type", "application/xml")], msg)
            if kind == "truncate" and self.command != "HEAD" and len(data) > 1:
                self._reply(status, headers, data, send=len(data) // 2)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # FIN: a clean close, too early
                return None
            return self._reply(status, headers, data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler
