"""Object-storage fixtures: a real S3 endpoint (moto server) on 127.0.0.1.

Fixture names other areas rely on: `s3_server` (endpoint URL), `s3_storage_options`
(StorageOptions for it) and `s3_bucket` (a fresh bucket per test, dummy credentials in the env).
`s3_list_only_options` are credentials that get real 403s on GetObject in `s3_bucket`.
`flaky_s3` puts a tiny HTTP proxy in front of moto that answers real 503 SlowDown responses;
`fault_proxy` is the general one (tests/faults_proxy.py: 503/5xx, delays, reset connections for a
window of seconds or the next N requests), with `fault_s3_options` pointing StorageOptions at it."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

DUMMY_KEY = "testing-key-id"
DUMMY_SECRET = "testing-secret-not-real"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto S3 server running for the whole session."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request is slow
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_storage_options(s3_server):
    from batch_inpaint.storage.store import StorageOptions

    return StorageOptions(
        endpoint_url=s3_server,
        region="us-east-1",
        key=DUMMY_KEY,
        secret=DUMMY_SECRET,
        retries=3,
        backoff_s=0.01,
    )


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=DUMMY_KEY,
        aws_secret_access_key=DUMMY_SECRET,
    )


def put_objects(endpoint: str, bucket: str, objects: dict[str, bytes]) -> None:
    """Many objects into a bucket of the in-process moto server, fast: straight into moto's
    backend (thousands in well under a second); concurrent PUTs if its internals ever move.
    Only test data goes this way: what is under test still lists and reads over HTTP."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        backend.get_bucket(bucket)
    except Exception:  # pragma: no cover - moto changed: fall back to real PUTs
        from concurrent.futures import ThreadPoolExecutor

        client = s3_client(endpoint)
        with ThreadPoolExecutor(32) as pool:
            put = lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1])  # noqa: E731
            list(pool.map(put, objects.items()))
        return
    for key, data in objects.items():
        backend.put_object(bucket, key, data)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh, empty bucket's name; the standard AWS env vars point at the moto server."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client(s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_list_only_options(s3_bucket, s3_server, s3_storage_options):
    """Options for an IAM user that may list but not get objects, with s3://<s3_bucket>/private.png
    in place. While this fixture lives moto enforces IAM for every request (so the dummy keys of
    `s3_storage_options` are refused too): requests get real 403 responses."""
    import boto3
    import moto.settings

    from batch_inpaint.storage.store import Storage

    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1")
    name = f"reader-{s3_bucket}"
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(UserName=name, PolicyName="list-only", PolicyDocument=json.dumps(policy))
    k = iam.create_access_key(UserName=name)["AccessKey"]
    Storage(s3_storage_options).write_bytes(f"s3://{s3_bucket}/private.png", b"x")
    old = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    yield s3_storage_options.replace(key=k["AccessKeyId"], secret=k["SecretAccessKey"])
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = old


class FlakyProxy:
    """Forwards HTTP requests to the upstream endpoint, but answers the first `fail` requests
    whose method is in `methods` with a real HTTP 503 SlowDown."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("://", 1)[1]
        self.fail = 0
        self.methods = {"GET", "PUT", "HEAD"}
        self.failed = 0
        self.requests = 0
        self.delay_s = 0.0  # added to every forwarded request (a slow, far-away endpoint)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    inject = self.command in proxy.methods and proxy.failed < proxy.fail
                    if inject:
                        proxy.failed += 1
                if inject:
                    data = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_s3(s3_server):
    """A FlakyProxy in front of the moto server; set `.fail = n` to inject n 503 responses."""
    proxy = FlakyProxy(s3_server)
    yield proxy
    proxy.close()


@pytest.fixture
def fault_proxy(s3_server):
    """A FaultProxy (tests/faults_proxy.py) in front of the moto server, stopped with the test:
    `with fault_proxy.fault("503", seconds=2): ...`."""
    from tests.faults_proxy import FaultProxy

    proxy = FaultProxy(s3_server)
    yield proxy
    proxy.close()


@pytest.fixture
def fault_s3_options(fault_proxy, s3_storage_options):
    """s3_storage_options through `fault_proxy` (5 attempts, short backoff)."""
    return s3_storage_options.replace(endpoint_url=fault_proxy.url, retries=5, backoff_s=0.05)
