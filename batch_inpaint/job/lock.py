"""A lock object with an expiry on storage, so two overlapping scheduled runs into one output never
process the same rows twice. Taken with a create-only write (atomic on S3 and local disks); a lock
older than its TTL (a run that died) may be broken by the next run."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid

from batch_inpaint.errors import InpaintError, NotFoundError


class LockedError(InpaintError):
    kind = "locked"


class OutputLock:
    def __init__(self, storage, output: str, ttl_s: float):
        self.storage = storage
        self.uri = output.rstrip("/") + "/_LOCK"
        self.ttl_s = ttl_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {"owner": self.token, "acquired_at": now, "expires_at": now + self.ttl_s}
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
        if current is not None and current.get("expires_at", 0) > time.time():
            left = current["expires_at"] - time.time()
            raise LockedError(
                f"{self.uri} is held by {current.get('owner')} for {left:.0f} s more: another run "
                "into this output is in progress (a stale lock expires after lock_ttl_s)"
            )
        # Stale (or unreadable): only one run may break this lock. Delete-then-create would let
        # a run that saw it stale delete the fresh lock another run just took; instead the right
        # to take over is a create-only marker named after the stale lock's bytes.
        tag = hashlib.sha256(raw or b"").hexdigest()[:16]
        marker = f"{self.uri}.takeover-{tag}"
        if not self.storage.write_bytes(marker, self.token.encode(), overwrite=False):
            raise LockedError(f"{self.uri}: another run took the expired lock first")
        self.storage.write_bytes(self.uri, self._body())
        self._hold()  # the marker stays: a run that read the same stale lock late must still lose

    def _hold(self) -> None:
        """Held: renew the expiry every ttl/3 so a run longer than the TTL keeps its lock."""
        self.held = True
        self._stop.clear()
        self._beat = threading.Thread(target=self._renew_loop, name="output-lock", daemon=True)
        self._beat.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
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


def _parse(raw: bytes | None) -> dict | None:
    try:
        body = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
