"""The S3 hot path (storage/s3_objects.py): a whole-object read or write is one request on the wire
(no HEAD before it), one client per process serves every Storage and thread, and the output
contract holds as before: create-only never replaces, writes stay below the root."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest

from batch_inpaint.errors import NotFoundError, StorageError
from batch_inpaint.storage import Storage, s3_objects


@pytest.fixture
def counted(s3_bucket, fault_proxy, fault_s3_options):
    """(Storage through the fault proxy with no fault on, the proxy, the bucket's URI)."""
    return Storage(fault_s3_options), fault_proxy, f"s3://{s3_bucket}"


def _requests(proxy, fn) -> int:
    before = proxy.requests
    fn()
    return proxy.requests - before


def test_a_read_a_write_or_a_delete_is_one_request(counted):
    s, proxy, b = counted
    assert _requests(proxy, lambda: s.write_bytes(f"{b}/o/a.bin", b"abc")) == 1
    assert _requests(proxy, lambda: s.read_bytes(f"{b}/o/a.bin")) == 1
    assert _requests(proxy, lambda: s.read_bytes(f"{b}/o/a.bin", 1, 3)) == 1
    assert s.read_bytes(f"{b}/o/a.bin", 1, 3) == b"bc" and s.read_bytes(f"{b}/o/a.bin", 1) == b"bc"
    assert _requests(proxy, lambda: s.write_bytes(f"{b}/o/c.bin", b"1", overwrite=False)) == 1
    # a create-only write that finds an object: one refused request, the object untouched
    assert _requests(proxy, lambda: s.write_bytes(f"{b}/o/c.bin", b"2", overwrite=False)) == 1
    assert s.write_bytes(f"{b}/o/c.bin", b"2", overwrite=False) is False
    assert s.read_bytes(f"{b}/o/c.bin") == b"1"
    assert _requests(proxy, lambda: s.delete(f"{b}/o/c.bin")) == 1  # no HEAD first
    assert _requests(proxy, lambda: s.delete(f"{b}/o/c.bin")) == 1  # gone: still no error
    with pytest.raises(NotFoundError, match=r"o/c.bin: not found \(404\)"):
        s.read_bytes(f"{b}/o/c.bin")


def test_writes_and_deletes_outside_the_root_send_nothing(counted):
    s, proxy, b = counted
    s.write_bytes(f"{b}/other/keep.bin", b"keep")
    for op in (
        lambda: s.write_bytes(f"{b}/other/keep.bin", b"x", root=f"{b}/out"),
        lambda: s.write_bytes(f"{b}/out2/x.bin", b"x", root=f"{b}/out"),  # a sibling prefix
        lambda: s.delete(f"{b}/other/keep.bin", root=f"{b}/out"),
    ):
        before = proxy.requests
        with pytest.raises(StorageError, match="not inside the output"):
            op()
        assert proxy.requests == before
    assert s.read_bytes(f"{b}/other/keep.bin") == b"keep"


def test_one_client_per_process_for_every_storage_thread_and_unpickled_copy(
    s3_bucket, s3_storage_options
):
    s = Storage(s3_storage_options)
    copy = pickle.loads(pickle.dumps(s))
    assert s3_objects.client(s.options) is s3_objects.client(copy.options)
    assert s3_objects.client(s.options.replace(timeout_s=5)) is not s3_objects.client(s.options)
    uris = [f"s3://{s3_bucket}/many/{i}.bin" for i in range(32)]
    with ThreadPoolExecutor(8) as pool:  # the local executor's threads share the client
        list(pool.map(lambda u: s.write_bytes(u, u.encode()), uris))
        assert list(pool.map(copy.read_bytes, uris)) == [u.encode() for u in uris]
    assert s._fs == {}  # no s3fs filesystem was made for any of it


def test_ranges_as_before(s3_bucket, s3_storage_options):
    s = Storage(s3_storage_options)
    s.write_bytes(f"s3://{s3_bucket}/r.bin", b"0123456789")
    assert s.read_bytes(f"s3://{s3_bucket}/r.bin", 0, 4) == b"0123"
    assert s.read_bytes(f"s3://{s3_bucket}/r.bin", 8, 100) == b"89"  # past the end: what is there
    assert s.read_bytes(f"s3://{s3_bucket}/r.bin", -3) == b"789"  # from the end: s3fs reads it
    s.write_bytes(f"s3://{s3_bucket}/empty.bin", b"")
    assert s.read_bytes(f"s3://{s3_bucket}/empty.bin", 0, 10) == b""
    with pytest.raises(StorageError):  # a range past the end of a non-empty object is an error
        s.read_bytes(f"s3://{s3_bucket}/r.bin", 20, 30)
