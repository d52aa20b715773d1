"""OutputLock on real local storage, no Ray: one run at a time per output; a lock whose holder
stopped renewing is stale after ttl_s; the refusal names the holder and its last renewal."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from batch_inpaint.job.driver.lock import LockedError, OutputLock
from batch_inpaint.storage.store import Storage


def _age_lock(path, seconds: float) -> None:
    body = json.loads(path.read_text())
    body["renewed_at"] = time.time() - seconds
    path.write_text(json.dumps(body))


def test_lock_refuses_a_live_lock_and_takes_a_stale_one(tmp_path):
    storage = Storage()
    a = OutputLock(storage, str(tmp_path), ttl_s=60)
    b = OutputLock(storage, str(tmp_path), ttl_s=60)
    a.acquire()
    with pytest.raises(LockedError) as err:
        b.acquire()
    msg = str(err.value)
    assert a.host in msg and f"process {a.pid}" in msg and "last renewed 0 s ago" in msg
    assert err.value.kind == "locked"
    b.release()  # not the owner: must not remove a's lock
    assert (tmp_path / "_LOCK").is_file()
    a.release()
    assert not (tmp_path / "_LOCK").exists()
    b.acquire()  # free again
    b._stop.set()  # b "dies": no more renewals
    _age_lock(tmp_path / "_LOCK", 61)
    a.acquire()  # b stopped renewing for longer than ttl_s: stale
    assert json.loads((tmp_path / "_LOCK").read_text())["owner"] == a.token
    b.release()
    assert json.loads((tmp_path / "_LOCK").read_text())["owner"] == a.token
    a.release()


def test_a_lock_is_stale_after_missed_renewals_not_after_hours(tmp_path):
    """A killed run's lock blocks the next run for ttl_s at most (a few renewal periods)."""
    storage = Storage()
    dead = OutputLock(storage, str(tmp_path), ttl_s=0.8)
    dead.acquire()
    dead._stop.set()  # killed: the renewal thread is gone, the lock object stays
    with pytest.raises(LockedError):
        OutputLock(storage, str(tmp_path), ttl_s=0.8).acquire()
    time.sleep(1.0)
    nxt = OutputLock(storage, str(tmp_path), ttl_s=0.8)
    nxt.acquire()
    assert nxt.held
    nxt.release()


def test_lock_of_an_older_version_with_only_an_expiry_is_judged_by_its_age(tmp_path):
    old = {"owner": "dead-host:1:abcdef", "acquired_at": 1.0, "expires_at": time.time() + 3600}
    (tmp_path / "_LOCK").write_text(json.dumps(old))
    lock = OutputLock(Storage(), str(tmp_path), ttl_s=60)
    lock.acquire()  # acquired in 1970 and never renewed: stale
    assert lock.held
    lock.release()


class _PausingStorage(Storage):
    """Real local storage; `pause_after_read` holds the caller after it has read the lock, so a
    test can let another run act in between (the race two scheduled runs can hit)."""

    def __init__(self):
        super().__init__()
        self.pause_after_read: threading.Event | None = None
        self.read_done = threading.Event()

    def read_bytes(self, uri, start=None, end=None):
        data = super().read_bytes(uri, start, end)
        if self.pause_after_read is not None and uri.endswith("_LOCK"):
            self.read_done.set()
            self.pause_after_read.wait(10)
            self.pause_after_read = None
        return data


def test_two_runs_racing_for_a_stale_lock_never_both_hold_it(tmp_path):
    stale = {"owner": "dead:1:x", "host": "dead", "pid": 1, "renewed_at": 1.0}
    (tmp_path / "_LOCK").write_text(json.dumps(stale))
    slow_storage = _PausingStorage()
    slow_storage.pause_after_read = go = threading.Event()
    slow = OutputLock(slow_storage, str(tmp_path), ttl_s=60)
    fast = OutputLock(Storage(), str(tmp_path), ttl_s=60)
    outcome: dict[str, object] = {}

    def run_slow():
        try:
            slow.acquire()
            outcome["slow"] = "held"
        except LockedError as exc:
            outcome["slow"] = exc

    t = threading.Thread(target=run_slow)
    t.start()
    assert slow_storage.read_done.wait(10)  # slow has seen the stale lock ...
    fast.acquire()  # ... fast takes it over meanwhile ...
    go.set()  # ... then slow goes on with what it saw
    t.join(20)
    holders = [n for n, lk in (("slow", slow), ("fast", fast)) if lk.held]
    assert holders == ["fast"], f"both runs think they hold the lock: {outcome}"
    assert isinstance(outcome["slow"], LockedError)
    assert json.loads((tmp_path / "_LOCK").read_text())["owner"] == fast.token
    fast.release()


def test_held_lock_is_renewed_so_it_never_goes_stale(tmp_path):
    storage = Storage()
    out = str(tmp_path / "out")
    lock = OutputLock(storage, out, ttl_s=0.6)
    lock.acquire()
    try:
        first = json.loads(storage.read_bytes(lock.uri))["renewed_at"]
        time.sleep(1.0)  # longer than ttl_s: only renewal keeps it held
        later = json.loads(storage.read_bytes(lock.uri))["renewed_at"]
        assert later > first
        with pytest.raises(LockedError):
            OutputLock(storage, out, ttl_s=0.6).acquire()
    finally:
        lock.release()
    assert not storage.exists(lock.uri)


def test_a_lock_whose_holder_on_this_host_has_exited_is_taken_at_once(tmp_path):
    """A driver killed with SIGKILL and rerun on the same machine need not wait for ttl_s."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    storage = Storage()
    lock = OutputLock(storage, str(tmp_path), ttl_s=600)
    body = {"owner": "x", "host": lock.host, "pid": gone.pid, "renewed_at": time.time()}
    (tmp_path / "_LOCK").write_text(json.dumps(body))
    lock.acquire()
    assert lock.held
    lock.release()
    # the same lock held by a live process on this host is respected
    (tmp_path / "_LOCK").write_text(json.dumps({**body, "pid": os.getpid()}))
    with pytest.raises(LockedError):
        OutputLock(storage, str(tmp_path), ttl_s=600).acquire()
