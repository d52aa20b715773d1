"""One run at a time per output: a lock object `{output}/_LOCK` that every run takes.

Taken with a create-only write (atomic on S3 and local disks). Its holder renews it every
`ttl_s / 4` seconds; a lock not renewed for `ttl_s` (a run that died: killed, preempted, lost
its node) is stale and the next run may take it over. The refusal says who holds the lock and when
it was last renewed. A holder on the same host whose process has exited is stale at once.

The holder knows when its lease ends: the start of its last renewal that succeeded, plus `ttl_s`,
less a margin, on a monotonic clock. `check()` raises LostLockError past that time or once a
renewal found another owner; the driver calls it before every write and delete (LeasedStorage), so
a run that stalled (a paused process, a laptop lid, a partition from the store) and lost its lock
to another run stops without touching the output again. Renewal, takeover and release are
compare-and-swap writes (Storage.swap), so they can never overwrite each other."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid

from batch_inpaint.errors import InpaintError, NotFoundError
from batch_inpaint.job.io.output_folder import OutputFolder
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import ErrorKind

RENEWALS_BEFORE_STALE = 4
LEASE_MARGIN = 0.1  # of ttl_s: clocks of two hosts may disagree a little; stop before the end


class LockedError(InpaintError):
    kind = ErrorKind.LOCKED.value


class LostLockError(LockedError):
    """This run's lease on the output ended (another run took the lock over, or renewals
    failed for too long): it stops, and writes and deletes nothing more there."""


class OutputLock:
    def __init__(self, storage, output: str, ttl_s: float):
        self.storage = storage
        self.uri = OutputFolder(storage, output).lock
        self.stale_s = ttl_s  # without renewal for this long, the lock is stale
        self.renew_s = ttl_s / RENEWALS_BEFORE_STALE
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.token = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._acquired_at = 0.0
        self._written = b""  # the lock's bytes as this run last wrote them
        self._lease_end = 0.0  # time.monotonic() after which the lock may be someone else's
        self._lost: str | None = None
        self.margin = max(LEASE_MARGIN * ttl_s, min(1.0, ttl_s / 8))

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
            started, body = time.monotonic(), self._body()
            if self.storage.write_bytes(self.uri, body, overwrite=False):
                self._hold(body, started)
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
        # The replacement itself is a compare-and-swap against the stale bytes, so a renewal
        # that lands meanwhile (a holder that was only slow) wins and this run backs off.
        tag = hashlib.sha256(raw or b"").hexdigest()[:16]
        marker = f"{self.uri}.takeover-{tag}"
        if not self.storage.write_bytes(marker, self.token.encode(), overwrite=False):
            raise LockedError(f"{self.uri}: another run took the stale lock first")
        try:
            started, body = time.monotonic(), self._body()
            if not self.storage.swap(self.uri, raw, body):
                raise LockedError(f"{self.uri}: the lock changed while this run took it over")
            self._hold(body, started)
        finally:  # done either way; a late reader of the same stale bytes fails the swap
            self.storage.delete(marker)

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

    def _hold(self, body: bytes, started: float) -> None:
        self.held = True
        self._acquired_at = time.time()
        self._lost = None
        self._renewed(body, started)
        self._stop.clear()
        self._beat = threading.Thread(target=self._renew_loop, name="output-lock", daemon=True)
        self._beat.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            self.renew()

    def renew(self) -> None:
        """One renewal: a compare-and-swap against the bytes this run last wrote. A lock that
        holds anything else belongs to another run now: the lease is lost for good. A renewal
        that fails (storage down) is tried again at the next beat; the lease runs out meanwhile."""
        if self._lost is not None:
            return
        started, body = time.monotonic(), self._body()
        try:
            ours = self.storage.swap(self.uri, self._written, body)
        except InpaintError:
            return
        if not ours:
            holder = _parse(self._read_raw_quietly()) or {}
            self._lost = (f"another run (host {holder.get('host', '?')} process "
                          f"{holder.get('pid', '?')}) took the lock over")  # fmt: skip
            self._stop.set()
        else:
            self._renewed(body, started)

    def _renewed(self, body: bytes, started: float) -> None:
        """`body` is the lock now, written at `started`: the lease runs from then."""
        self._written, self._lease_end = body, started + self.stale_s - self.margin

    def check(self) -> None:
        """Raise LostLockError unless this run still holds the lock for certain: call it right
        before any write or delete under the output."""
        if self._lost is None and time.monotonic() > self._lease_end:
            self._lost = (f"no renewal succeeded for {self.stale_s - self.margin:.0f} s (the "
                          "process stalled, or the store was unreachable), so another run may "
                          "have taken the lock over")  # fmt: skip
        if self._lost is not None:
            raise LostLockError(
                f"{self.uri}: this run lost the output's lock: {self._lost}. It stopped and "
                "wrote nothing more into the output; the run that holds the lock now (or the "
                "next run) finishes the rows"
            )

    def _read_raw(self) -> bytes | None:
        try:
            return self.storage.read_bytes(self.uri)
        except NotFoundError:
            return None

    def _read_raw_quietly(self) -> bytes | None:
        try:
            return self._read_raw()
        except InpaintError:
            return None

    def release(self) -> None:
        """Stop renewing and remove the lock, only if it is still this run's (compare-and-swap:
        a lock another run took over is left alone)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        if self.held and self._lost is None:
            # left behind when the store fails: stale after ttl_s, or at once on this host
            with contextlib.suppress(InpaintError):
                self.storage.swap(self.uri, self._written, None)
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


class LeasedStorage(Storage):
    """The driver's storage while it holds the output's lock: every write, swap and delete checks
    the lease immediately before it, so nothing is written or removed once the lock may be
    another run's. Shares the plain storage's filesystems. Sent to a task in another process it
    becomes a HolderStorage: that process holds no lease, so it checks the lock's owner."""

    def __init__(self, storage: Storage, lock: OutputLock):
        self.__dict__ = storage.__dict__
        self.lease = lock

    def __reduce__(self):
        return (HolderStorage, (self.options, self.lease.uri, self.lease.token))

    def write_bytes(self, uri, data, *, overwrite=True, root=None) -> bool:
        self.lease.check()
        return super().write_bytes(uri, data, overwrite=overwrite, root=root)

    def swap(self, uri, expected, data, *, root=None) -> bool:
        self.lease.check()
        return super().swap(uri, expected, data, root=root)

    def delete(self, uri, *, root=None) -> None:
        self.lease.check()
        super().delete(uri, root=root)


class HolderStorage(Storage):
    """A worker's storage in a run that holds the output's lock: each write or delete first reads
    the lock and goes on only while this run still owns it. A worker of a run that lost its lock
    (its driver stalled) writes nothing more (LostLockError, an error row) instead of images that
    no result row would point to once the winning run has ended."""

    def __init__(self, options, lock_uri: str, token: str):
        super().__init__(options)
        self.lock_uri, self.token = lock_uri, token

    def __reduce__(self):
        return (HolderStorage, (self.options, self.lock_uri, self.token))

    def _check(self) -> None:
        try:
            owner = (_parse(self.read_bytes(self.lock_uri)) or {}).get("owner")
        except NotFoundError:
            owner = None
        if owner != self.token:
            raise LostLockError(
                f"{self.lock_uri}: this run lost the output's lock (another run took it over "
                "while this run's driver was stalled); its workers write nothing more"
            )

    def write_bytes(self, uri, data, *, overwrite=True, root=None) -> bool:
        self._check()
        return super().write_bytes(uri, data, overwrite=overwrite, root=root)

    def delete(self, uri, *, root=None) -> None:
        self._check()
        super().delete(uri, root=root)
