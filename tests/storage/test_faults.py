"""Transient storage faults on the wire (tests/faults_proxy.py in front of moto's S3 server):
retried where they happen, TransientStorageError (kind storage_transient) once the attempts run out,
and never a retry for a 403 or a 404."""

from __future__ import annotations

import http.client
import logging
import pickle
import time
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_inpaint.errors import (
    AccessDeniedError,
    NotFoundError,
    StorageError,
    TransientStorageError,
    error_kind,
)
from batch_inpaint.storage import Storage
from batch_inpaint.vocab import TRANSIENT_KINDS, ErrorKind
from tests.fixtures_s3 import s3_client

# 8 attempts, first wait 0.1 s doubling: at least 6 s of waiting, far past the 1 s windows below
PATIENT = {"retries": 8, "backoff_s": 0.1, "max_backoff_s": 2.0}


@pytest.fixture
def seeded(s3_bucket, s3_storage_options):
    Storage(s3_storage_options).write_bytes(f"s3://{s3_bucket}/in/k.bin", b"data")
    return f"s3://{s3_bucket}"


@pytest.mark.parametrize("kind", ["503", "500", "reset"])
def test_reads_writes_and_listings_survive_a_fault_window(
    kind, seeded, fault_proxy, fault_s3_options, s3_storage_options
):
    s = Storage(fault_s3_options.replace(**PATIENT))
    # clients made before the window opens: s3fs's (exists) and the object client's (read), whose
    # making can outlast a 1 s window on a loaded machine
    assert s.exists(f"{seeded}/in/k.bin") and s.read_bytes(f"{seeded}/in/k.bin") == b"data"
    with fault_proxy.fault(kind, seconds=1.0) as f:
        t0 = time.monotonic()
        assert s.read_bytes(f"{seeded}/in/k.bin") == b"data"
        s.write_bytes(f"{seeded}/out/w.bin", b"written")
        assert s.write_bytes(f"{seeded}/out/c.bin", b"once", overwrite=False) is True
        assert s.list(f"{seeded}/in") == [f"{seeded}/in/k.bin"]
        assert s.exists(f"{seeded}/out/w.bin") and s.size(f"{seeded}/out/w.bin") == 7
    assert f.hits >= 2 and time.monotonic() - t0 >= 1.0  # the window was met, and outlasted
    direct = Storage(s3_storage_options)
    assert direct.read_bytes(f"{seeded}/out/w.bin") == b"written"
    assert direct.read_bytes(f"{seeded}/out/c.bin") == b"once"


def test_a_few_dropped_connections_on_puts_only(seeded, fault_proxy, fault_s3_options):
    s = Storage(fault_s3_options.replace(**PATIENT))
    with fault_proxy.fault("reset", count=3, methods={"PUT"}) as f:
        s.write_bytes(f"{seeded}/out/r.bin", b"x" * 100_000)
        assert s.read_bytes(f"{seeded}/in/k.bin") == b"data"  # GETs pass untouched
    assert f.hits == 3
    assert s.read_bytes(f"{seeded}/out/r.bin") == b"x" * 100_000


@pytest.mark.parametrize("kind", ["503", "reset", "truncate"])
def test_a_window_longer_than_the_retries_is_transient_not_permanent(
    kind, seeded, fault_proxy, fault_s3_options
):
    s = Storage(fault_s3_options.replace(retries=3, backoff_s=0.01))
    with (
        fault_proxy.fault(kind, methods={"GET"}) as f,
        pytest.raises(TransientStorageError, match="after 3 attempts") as exc,
    ):
        s.read_bytes(f"{seeded}/in/k.bin")
    assert f.hits >= 3
    assert exc.value.kind == ErrorKind.STORAGE_TRANSIENT.value == error_kind(exc.value)
    assert exc.value.kind in TRANSIENT_KINDS and isinstance(exc.value, StorageError)
    assert f"{seeded}/in/k.bin" in str(exc.value)


def test_writes_that_outlast_the_retries_leave_no_object(
    seeded, fault_proxy, fault_s3_options, s3_storage_options
):
    s = Storage(fault_s3_options.replace(retries=2, backoff_s=0.01))
    with fault_proxy.fault("503"):
        with pytest.raises(TransientStorageError):
            s.write_bytes(f"{seeded}/out/never.bin", b"x" * 1000)
        with pytest.raises(TransientStorageError):
            s.list(f"{seeded}/in")
    assert not Storage(s3_storage_options).exists(f"{seeded}/out/never.bin")


def test_a_timeout_is_transient(seeded, fault_proxy, fault_s3_options):
    s = Storage(fault_s3_options.replace(retries=2, backoff_s=0.01, timeout_s=0.5))
    with (
        fault_proxy.fault("delay", delay_s=1.5) as f,
        pytest.raises(TransientStorageError, match="after 2 attempts"),
    ):
        s.read_bytes(f"{seeded}/in/k.bin")
    assert f.hits >= 2


def test_403_is_access_denied_at_once(s3_bucket, s3_list_only_options, fault_proxy, caplog):
    s = Storage(s3_list_only_options.replace(endpoint_url=fault_proxy.url, retries=5))
    with (
        caplog.at_level(logging.WARNING, logger="batch_inpaint.storage.store"),
        pytest.raises(AccessDeniedError, match=r"access denied \(403\)") as exc,
    ):
        s.read_bytes(f"s3://{s3_bucket}/private.png")
    assert exc.value.kind == "access_denied"
    assert fault_proxy.requests <= 2  # one GET (at most one HEAD): no retry loop
    assert "transient" not in caplog.text


def test_404_is_not_found_at_once_with_s3_wording(seeded, fault_proxy, fault_s3_options):
    s = Storage(fault_s3_options)
    with pytest.raises(NotFoundError, match=r"not found \(404\)") as exc:
        s.read_bytes(f"{seeded}/in/missing.bin")
    assert exc.value.kind == "not_found" and fault_proxy.requests <= 2


def test_pyarrow_s3_filesystem_retries_on_its_own_also_after_pickling(
    seeded, fault_proxy, fault_s3_options, s3_storage_options
):
    """Ray Data's read_parquet gets Storage.pyarrow_filesystem, pickled to its workers: plain
    pyarrow drops the retry strategy there (3 attempts), failing on 3 503s in a row."""
    fs0, path = Storage(s3_storage_options).pyarrow_filesystem(f"{seeded}/t.parquet")
    pq.write_table(pa.table({"a": [1, 2, 3]}), path, filesystem=fs0)
    fs, path = Storage(fault_s3_options.replace(retries=6)).pyarrow_filesystem(
        f"{seeded}/t.parquet"
    )
    shipped = pickle.loads(pickle.dumps(fs))  # as Ray sends it
    assert type(shipped) is type(fs) and fs.max_attempts == shipped.max_attempts == 6
    with fault_proxy.fault("503", count=3) as fault:
        assert pq.read_table(path, filesystem=shipped).column("a").to_pylist() == [1, 2, 3]
    assert fault.hits == 3


# --- the proxy itself -----------------------------------------------------------------------


def _request(url: str, method: str = "GET") -> tuple[int, bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.netloc, timeout=10)
    try:
        conn.request(method, f"{u.path}?{u.query}")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_fault_proxy_counts_windows_methods_and_kinds(seeded, fault_proxy):
    client = s3_client(fault_proxy.url)
    where = {"Bucket": seeded.split("://")[1], "Key": "in/k.bin"}
    get = client.generate_presigned_url("get_object", Params=where)
    head = client.generate_presigned_url("head_object", Params=where)
    assert _request(get) == (200, b"data")
    with fault_proxy.fault("503", count=2, methods={"GET"}) as f:
        assert _request(head, "HEAD")[0] == 200  # not a GET
        status, body = _request(get)
        assert status == 503 and b"<Code>SlowDown</Code>" in body
        assert _request(get)[0] == 503
        assert _request(get) == (200, b"data")  # count spent
    assert f.hits == 2 and not f.active()
    with (
        fault_proxy.fault("reset", path=r"/in/k\.bin"),
        pytest.raises((ConnectionError, http.client.RemoteDisconnected)),
    ):
        _request(get)
    with (
        fault_proxy.fault("truncate"),
        pytest.raises(http.client.IncompleteRead),  # half the body, then a clean close
    ):
        _request(get)
    f = fault_proxy.fault("delay", delay_s=0.3, seconds=5)  # without `with`
    t0 = time.monotonic()
    assert _request(get) == (200, b"data")
    assert time.monotonic() - t0 >= 0.3
    f.stop()
    with fault_proxy.fault("500", seconds=0.2) as f:
        assert _request(get)[0] == 500
        time.sleep(0.3)
        assert _request(get)[0] == 200  # the window closed
    with pytest.raises(ValueError, match="unknown fault kind"):
        fault_proxy.fault("explode")
    assert fault_proxy.url.startswith("http://127.0.0.1:")
