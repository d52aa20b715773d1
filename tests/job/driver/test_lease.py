"""The output lock's lease, on real local disk and the local S3 server, no Ray: a holder that
stalled past its lease stops (LostLockError) before any write or delete, renewal and takeover are
compare-and-swap writes that never clobber each other, and a worker of a run that lost its lock
writes nothing."""

from __future__ import annotations

import json
import pickle
import threading
import time

import pytest

from batch_inpaint.job.driver.lock import (
    HolderStorage,
    LeasedStorage,
    LockedError,
    LostLockError,
    OutputLock,
)
from batch_inpaint.storage.store import Storage


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(storage, output URI) on local disk or in a bucket of the local S3 server."""
    if request.param == "local":
        return Storage(), str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_bucket")
    options = request.getfixturevalue("s3_storage_options")
    return Storage(options), f"s3://{bucket}/out"


def test_swap_replaces_only_what_the_caller_last_saw(where):
    storage, out = where
    uri = out + "/_LOCK"
    assert storage.write_bytes(uri, b"v1", overwrite=False)
    assert not storage.swap(uri, b"other", b"v2")  # holds v1, not "other": left alone
    assert storage.read_bytes(uri) == b"v1"
    assert storage.swap(uri, b"v1", b"v2")
    assert not storage.swap(uri, b"v1", b"v3")  # a second swap from the same view loses
    assert storage.read_bytes(uri) == b"v2"
    assert not storage.swap(uri, b"v1", None)  # a delete from a stale view too
    assert storage.swap(uri, b"v2", None)
    assert not storage.exists(uri)
    assert not storage.swap(uri, b"v2", b"v4")  # gone: nothing to swap


def test_racing_swaps_from_one_view_have_exactly_one_winner(where):
    storage, out = where
    uri = out + "/_LOCK"
    storage.write_bytes(uri, b"stale", overwrite=False)
    wins: list[bytes] = []
    start = threading.Barrier(6)

    def racer(k: int) -> None:
        start.wait()
        if storage.swap(uri, b"stale", f"run-{k}".encode()):
            wins.append(f"run-{k}".encode())

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1, wins
    assert storage.read_bytes(uri) == wins[0]


def test_a_holder_that_stalled_past_its_lease_stops_before_writing(where):
    storage, out = where
    lock = OutputLock(storage, out, ttl_s=1.2)
    lock.acquire()
    leased = LeasedStorage(storage, lock)
    leased.write_bytes(out + "/a.txt", b"while held")  # within the lease: fine
    lock._stop.set()  # the driver stalls: no more renewals (a paused process)
    time.sleep(1.3)
    with pytest.raises(LostLockError, match="lost the output's lock"):
        leased.write_bytes(out + "/b.txt", b"after the lease")
    with pytest.raises(LostLockError):
        leased.delete(out + "/a.txt")
    assert not storage.exists(out + "/b.txt") and storage.exists(out + "/a.txt")
    lock.release()  # its lease is over: the lock is not its to remove (it may be another's)


def test_a_takeover_while_the_holder_is_stalled_is_seen_at_its_next_renewal(where):
    storage, out = where
    a = OutputLock(storage, out, ttl_s=1.0)
    a.acquire()
    a._stop.set()  # stalled
    time.sleep(1.1)
    b = OutputLock(storage, out, ttl_s=1.0)
    b.acquire()  # A's lock is stale: B takes it over
    assert json.loads(storage.read_bytes(a.uri))["owner"] == b.token
    assert not [u for u in storage.list(out) if ".takeover-" in u]  # the marker went
    a.renew()  # A wakes up: its compare-and-swap finds B's lock and does not overwrite it
    assert json.loads(storage.read_bytes(a.uri))["owner"] == b.token
    with pytest.raises(LostLockError, match=f"process {b.pid}"):
        a.check()
    a.release()
    assert json.loads(storage.read_bytes(a.uri))["owner"] == b.token  # B's lock stays
    b.check()
    b.release()
    assert not storage.exists(b.uri)


def test_a_renewal_racing_a_takeover_never_leaves_two_holders(tmp_path):
    """The takeover's write is a swap against the stale bytes: if the slow holder renews between
    the other run's read and its write, the takeover fails instead of clobbering the renewal."""
    storage, out = Storage(), str(tmp_path / "out")
    a = OutputLock(storage, out, ttl_s=1.0)
    a.acquire()
    a._stop.set()
    time.sleep(1.1)
    b = OutputLock(storage, out, ttl_s=1.0)
    original = b._read_raw

    def read_then_let_a_renew():
        raw = original()
        a._lease_end = time.monotonic() + 10  # A was only slow: its renewal lands now
        a.renew()
        return raw

    b._read_raw = read_then_let_a_renew
    with pytest.raises(LockedError, match="changed while this run took it over"):
        b.acquire()
    assert not b.held
    assert json.loads(storage.read_bytes(a.uri))["owner"] == a.token
    a.check()  # A still holds it, for certain
    a.release()


def test_a_worker_of_a_run_that_lost_its_lock_writes_nothing(where):
    storage, out = where
    a = OutputLock(storage, out, ttl_s=60)
    a.acquire()
    worker = pickle.loads(pickle.dumps(LeasedStorage(storage, a)))  # as Ray ships it
    assert isinstance(worker, HolderStorage)
    worker.write_bytes(out + "/images/x.png", b"ok while held", root=out)
    storage.swap(a.uri, a._written, json.dumps({"owner": "someone-else"}).encode())
    with pytest.raises(LostLockError, match="lost the output.s lock"):
        worker.write_bytes(out + "/images/y.png", b"late", root=out)
    assert not storage.exists(out + "/images/y.png")
    a._lost = "test"  # a's own lease is over too; the other owner's lock stays
    a.release()
    assert storage.exists(a.uri)
