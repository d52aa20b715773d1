"""One run at a time per output: a lock object `{output}/_LOCK` that every run takes.

Taken with a create-only write (atomic on S3 and local disks). Its holder renews it every
`ttl_s / 4` seconds; a lock not renewed for `ttl_s` (a run that died: killed, preempted, lost
its node) is stale and the next run may take it over. The refusal says who holds the lock and when
it was last renewed. A holder on the same host whose process has exited is stale at once."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid

from batch_inpaint.errors import InpaintError, NotFoundError
from batch_inpaint.vocab import ErrorKind

RENEWALS_BEFORE_STALE = 4


class LockedError(InpaintError):
    kind = ErrorKind.LOCKED.value


class OutputLock:
    def __init__(self, storage, output: str, ttl_s: float):
        self.storage = storage
        self.uri = output.rstrip("/") + "/_LOCK"
        self.stale_s = ttl_s  # without renewal for this long, the lock is stale
        self.renew_s = ttl_s / RENEWALS_BEFORE_STALE
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.token = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._acquired_at = 0.0

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "owner": self.token,
                "host": self.host,
                "pid": self.pid,
                "acquired_at": self._acquired_at or now,
                "renewed_at": now,
                "renew_every_s": self.renew_s,
                "stale_after_s": self.stale_s,
            }  # fmt: skip
        ).encode()

    def acquire(self) -> None:
        for _ in range(3):  # a lock released between our create and our read: try again
            if self.storage.write_bytes(self.uri, self._body(), overwrite=False):
                self._hold()
                return
            raw = self._read_raw()
            if raw is not None:
                break
        else:
            raise LockedError(f"{self.uri} keeps changing hands: other runs are starting; retry")
        current = _parse(raw)
        if current is not None and not self._holder_died(current):
            age = time.time() - _renewed_at(current)
            stale_after = float(current.get("stale_after_s") or self.stale_s)
            if age < stale_after:
                raise LockedError(
                    f"{self.uri}: another run into this output is in progress: held by host "
                    f"{current.get('host', '?')} process {current.get('pid', '?')}, last renewed "
                    f"{age:.0f} s ago. Wait for it to finish; if it died, its lock is taken over "
                    f"{stale_after - age:.0f} s from now (after {stale_after:.0f} s without renewal)"
                )
        # Stale (or unreadable): only one run may break this lock. Delete-then-create would let
        # a run that saw it stale delete the fresh lock another run just took; instead the right
        # to take over is a create-only marker named after the stale lock's bytes.
        tag = hashlib.sha256(raw or b"").hexdigest()[:16]
        marker = f"{self.uri}.takeover-{tag}"
        if not self.storage.write_bytes(marker, self.token.encode(), overwrite=False):
            raise LockedError(f"{self.uri}: another run took the stale lock first")
        self.storage.write_bytes(self.uri, self._body())
        self._hold()  # the marker stays: a run that read the same stale lock late must still lose

    def _holder_died(self, body: dict) -> bool:
        """A holder on this host whose process is gone (killed, crashed) released nothing, but
        need not be waited for: its lock is stale at once."""
        if body.get("host") != self.host or not isinstance(body.get("pid"), int):
            return False
        try:
            os.kill(body["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def _hold(self) -> None:
        self.held = True
        self._acquired_at = time.time()
        self._stop.clear()
        self._beat = threading.Thread(target=self._renew_loop, name="output-lock", daemon=True)
        self._beat.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                if (self._read() or {}).get("owner") == self.token:
                    self.storage.write_bytes(self.uri, self._body())
            except InpaintError:  # a missed renewal is retried at the next beat
                pass

    def _read_raw(self) -> bytes | None:
        try:
            return self.storage.read_bytes(self.uri)
        except NotFoundError:
            return None

    def _read(self) -> dict | None:
        try:
            return _parse(self.storage.read_bytes(self.uri))
        except InpaintError:
            return None

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        if self.held and (self._read() or {}).get("owner") == self.token:
            self.storage.delete(self.uri)
        self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _renewed_at(body: dict) -> float:
    """When the holder last renewed; a lock from an older version has only expires_at."""
    value = body.get("renewed_at", body.get("acquired_at", 0.0))
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _parse(raw: bytes | None) -> dict | None:
    try:
        body = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
