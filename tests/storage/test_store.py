"""storage.py / uri.py / model_cache.py against local dirs, memory:// and a real S3 endpoint (moto)."""

from __future__ import annotations

import json
import os
import pickle
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_inpaint.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    StorageError,
    TransientStorageError,
    UriRejectedError,
)
from batch_inpaint.storage import (
    Storage,
    StorageOptions,
    check_uri,
    fetch_model_dir,
    output_key,
)
from batch_inpaint.storage.uri import MAX_KEY_CHARS, redact_uri
from tests.fixtures_s3 import s3_client

# --- options --------------------------------------------------------------------------------


def test_options_from_env_and_overrides():
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://s3only:2",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_PROFILE": "team",
    }
    o = StorageOptions.from_env(env)
    assert (o.endpoint_url, o.region, o.profile) == ("http://s3only:2", "eu-west-1", "team")
    o = StorageOptions.from_env({"AWS_REGION": "us-west-2"}, region="ap-south-1", retries=7)
    assert (o.region, o.retries, o.endpoint_url) == ("ap-south-1", 7, None)
    with pytest.raises(ConfigError, match="retries"):
        StorageOptions(retries=0)
    with pytest.raises(ConfigError, match="endpoint_url"):
        StorageOptions(endpoint_url="ftp://x")


def test_secrets_never_in_repr_public_dict_or_pickle_of_storage_repr():
    o = StorageOptions(key="AKIAREALKEY", secret="very-secret", token="tok-123", region="x")
    shown = repr(o) + repr(Storage(o)) + json.dumps(o.to_public_dict()) + str(o.redacted())
    for secret in ("AKIAREALKEY", "very-secret", "tok-123"):
        assert secret not in shown
    assert "key" not in o.to_public_dict() and o.redacted()["secret"] == "***"


def test_storage_pickles_without_filesystems(tmp_path):
    s = Storage(StorageOptions(region="r"))
    s.write_bytes(str(tmp_path / "a"), b"1")
    assert s._fs  # a filesystem was made lazily
    s2 = pickle.loads(pickle.dumps(s))
    assert s2._fs == {} and s2.options == s.options
    assert s2.read_bytes(str(tmp_path / "a")) == b"1"


# --- URI policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["/data/a.png", "rel/a.png", "file:///data/a.png", "s3://b/k.png", "gs://b/k", "memory://x"],
)
def test_allowed_uris(uri):
    assert check_uri(uri) == uri


@pytest.mark.parametrize(
    "uri, options, rule",
    [
        ("http://169.254.169.254/latest/meta-data/", None, "http"),
        ("http://169.254.169.254/latest/meta-data/", StorageOptions(allow_http=True), "link-local"),
        ("http://[fd00:ec2::254]/", StorageOptions(allow_http=True), "link-local"),
        ("http://metadata.google.internal/x", StorageOptions(allow_http=True), "link-local"),
        ("https://example.com/a.png", None, "allow_http"),
        ("simplecache::s3://b/k", None, "::"),
        ("ftp://host/a.png", None, "scheme 'ftp'"),
        ("hdfs://nn/a", None, "not allowed"),
        ("s3://other/k", StorageOptions(allowed_buckets=("mine",)), "allowed_buckets"),
        ("s3:///k", None, "bucket"),
        ("", None, "empty"),
    ],
)
def test_rejected_uris_name_uri_and_rule(uri, options, rule):
    with pytest.raises(UriRejectedError) as exc:
        check_uri(uri, options)
    assert rule in str(exc.value)
    if uri:
        assert uri.split("::")[0][:20] in str(exc.value)


def test_http_allowed_only_when_asked_and_bucket_allowlist():
    assert check_uri("https://example.com/a.png", StorageOptions(allow_http=True))
    assert check_uri("s3://mine/k", StorageOptions(allowed_buckets="mine,other"))
    with pytest.raises(UriRejectedError):
        Storage(StorageOptions()).read_bytes("http://169.254.169.254/")


def test_redact_uri_hides_userinfo_and_signatures():
    u = "https://user:pw@host/a.png?X-Amz-Signature=abc&X-Amz-Credential=AKIA&width=3"
    r = redact_uri(u)
    assert "pw" not in r and "abc" not in r and "AKIA" not in r and "width=3" in r


# --- output keys ----------------------------------------------------------------------------


def test_output_key_keeps_safe_ids_and_sanitises_the_rest():
    assert output_key("cat-001", ".png") == "cat-001.png"
    assert output_key("sub/dir/cat.v2") == "sub/dir/cat.v2"
    for rid in ["../etc/passwd", "/abs/path", "a b/ü ñ.png", "..", ".", "IMG_001", "x~y", "a//b"]:
        key = output_key(rid, ".png")
        assert "~" in key, rid
        assert not key.startswith("/") and ".." not in key.split("/"), key
        assert " " not in key and key.isascii()
    assert output_key("café").startswith("cafe~")


def test_output_key_no_collisions_between_ids_that_sanitise_alike():
    ids = ["a b", "a_b", "a?b", "A_B", "a/b", "a\\b", "a..b", "ab", "../ab", "ab/", "/ab", "ａb"]
    keys = [output_key(i, ".png") for i in ids]
    assert len(set(keys)) == len(ids)
    assert len({k.lower() for k in keys}) == len(ids)  # also on case-insensitive filesystems


def test_output_key_length_cap_and_bad_input():
    key = output_key("x" * 5000, ".png")
    assert len(key) <= MAX_KEY_CHARS + 4
    assert output_key("x" * 5000) != output_key("x" * 4999)
    with pytest.raises(ConfigError):
        output_key("")
    with pytest.raises(ConfigError):
        output_key("a", "/../x")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=300), min_size=2, max_size=20, unique=True))
def test_output_key_property(ids):
    keys = [output_key(i, ".png") for i in ids]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert len(k) <= MAX_KEY_CHARS + 4 and k.isascii() and not k.startswith("/")
        assert all(seg not in ("", ".", "..") for seg in k.split("/"))


# --- local and memory -----------------------------------------------------------------------


def test_local_writes_are_atomic_and_idempotent(tmp_path, monkeypatch):
    s = Storage(StorageOptions())
    target = str(tmp_path / "out" / "a.png")
    assert s.write_bytes(target, b"v1") is True
    assert s.write_bytes(target, b"v1") is True
    assert s.read_bytes(target) == b"v1" and os.listdir(tmp_path / "out") == ["a.png"]
    assert s.write_bytes(target, b"v2", overwrite=False) is False  # exactly-once create
    assert s.read_bytes(target) == b"v1"

    def crash(*a, **kw):
        raise OSError("crash before publishing")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StorageError):
        s.write_bytes(target, b"v3-partial")
    assert s.read_bytes(target) == b"v1"  # readers never see a half-written object
    assert os.listdir(tmp_path / "out") == ["a.png"]  # no temp file left behind


def test_local_errors_and_listing(tmp_path):
    s = Storage(StorageOptions())
    with pytest.raises(NotFoundError, match="missing.png"):
        s.read_bytes(str(tmp_path / "missing.png"))
    with pytest.raises(NotFoundError):
        s.list(str(tmp_path / "nodir"))
    for name in ["b.PNG", "a.jpg", "sub/c.png", "notes.txt"]:
        s.write_bytes(str(tmp_path / "d" / name), b"x")
    got = s.list(str(tmp_path / "d"), suffixes=(".png", ".jpg"))
    assert [os.path.relpath(p, tmp_path / "d") for p in got] == ["a.jpg", "b.PNG", "sub/c.png"]
    assert s.list(f"file://{tmp_path}/d/sub") == [str(tmp_path / "d" / "sub" / "c.png")]


def test_memory_filesystem_round_trip():
    s = Storage(StorageOptions())
    s.write_bytes("memory://bi-test/x/a b.png", b"hello")
    assert s.read_bytes("memory://bi-test/x/a b.png") == b"hello"
    assert s.exists("memory://bi-test/x/a b.png") and not s.exists("memory://bi-test/none")
    assert s.list("memory://bi-test/x") == ["memory://bi-test/x/a b.png"]
    fs, path = s.pyarrow_filesystem("memory://bi-test/x/a b.png")
    with fs.open_input_file(path) as f:
        assert f.read() == b"hello"


# --- S3 -------------------------------------------------------------------------------------


def test_s3_round_trip_unicode_spaces_zero_bytes(s3_bucket, s3_storage_options):
    s = Storage(s3_storage_options)
    keys = ["dir with space/ünïcødé 图.png", "a+b=c&d.png", "empty.bin"]
    for k in keys:
        s.write_bytes(f"s3://{s3_bucket}/{k}", b"" if k == "empty.bin" else k.encode())
    for k in keys:
        assert s.read_bytes(f"s3://{s3_bucket}/{k}") == (b"" if k == "empty.bin" else k.encode())
    assert s.size(f"s3://{s3_bucket}/empty.bin") == 0
    assert s.read_bytes(f"s3://{s3_bucket}/empty.bin", 0, 100) == b""  # a range of nothing
    assert sorted(s.list(f"s3://{s3_bucket}/")) == sorted(f"s3://{s3_bucket}/{k}" for k in keys)
    # the same key twice: one object, same content; exactly-once create says it existed
    s.write_bytes(f"s3://{s3_bucket}/{keys[1]}", b"same")
    s.write_bytes(f"s3://{s3_bucket}/{keys[1]}", b"same")
    assert s.write_bytes(f"s3://{s3_bucket}/{keys[1]}", b"other", overwrite=False) is False
    listed = s3_client(s3_storage_options.endpoint_url).list_objects_v2(Bucket=s3_bucket)
    assert listed["KeyCount"] == 3 and s.read_bytes(f"s3://{s3_bucket}/{keys[1]}") == b"same"
    assert s.read_bytes(f"s3://{s3_bucket}/{keys[0]}", 0, 3) == keys[0].encode()[:3]


def test_s3_env_only_options_and_pyarrow_filesystem(s3_bucket, s3_server):
    s = Storage()  # endpoint and keys from the AWS_* env vars that s3_bucket set
    assert s.options.endpoint_url == s3_server and s.options.key is None
    s.write_bytes(f"s3://{s3_bucket}/p/x.bin", b"abc")
    fs, path = s.pyarrow_filesystem(f"s3://{s3_bucket}/p/x.bin")
    import pyarrow.fs as pafs

    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_bucket}/p/x.bin"
    with fs.open_input_stream(path) as f:
        assert f.read() == b"abc"


def test_s3_404_names_the_object(s3_bucket, s3_storage_options):
    s = Storage(s3_storage_options)
    with pytest.raises(NotFoundError, match=f"s3://{s3_bucket}/nope.png.*404"):
        s.read_bytes(f"s3://{s3_bucket}/nope.png")
    with pytest.raises(NotFoundError):
        s.read_bytes("s3://no-such-bucket-bi/x.png")


def test_s3_403_is_access_denied_naming_the_object(
    s3_bucket, s3_storage_options, s3_list_only_options
):
    s = Storage(s3_list_only_options)
    assert s.list(f"s3://{s3_bucket}/") == [f"s3://{s3_bucket}/private.png"]
    with pytest.raises(AccessDeniedError, match=f"s3://{s3_bucket}/private.png.*403"):
        s.read_bytes(f"s3://{s3_bucket}/private.png")
    assert s3_list_only_options.secret not in repr(s)


def test_s3_transient_503_is_retried_with_backoff(s3_bucket, s3_storage_options, flaky_s3):
    Storage(s3_storage_options).write_bytes(f"s3://{s3_bucket}/k.bin", b"data")
    s = Storage(s3_storage_options.replace(endpoint_url=flaky_s3.url, retries=4))
    flaky_s3.fail = 3
    assert s.read_bytes(f"s3://{s3_bucket}/k.bin") == b"data"
    assert flaky_s3.failed == 3
    flaky_s3.failed, flaky_s3.fail = 0, 2
    s.write_bytes(f"s3://{s3_bucket}/k2.bin", b"put")  # PUTs are retried too
    assert (
        flaky_s3.failed == 2
        and Storage(s3_storage_options).read_bytes(f"s3://{s3_bucket}/k2.bin") == b"put"
    )


def test_s3_retries_give_up_and_never_leave_half_objects(s3_bucket, s3_storage_options, flaky_s3):
    s = Storage(s3_storage_options.replace(endpoint_url=flaky_s3.url, retries=2))
    flaky_s3.fail = 100
    with pytest.raises(TransientStorageError, match="after 2 attempts") as exc:
        s.write_bytes(f"s3://{s3_bucket}/never.bin", b"x" * 1000)
    assert exc.value.kind == "storage_transient"
    assert flaky_s3.failed == 2
    assert not Storage(s3_storage_options).exists(f"s3://{s3_bucket}/never.bin")


def test_s3_404_is_not_retried(s3_bucket, s3_storage_options, flaky_s3):
    s = Storage(s3_storage_options.replace(endpoint_url=flaky_s3.url, retries=5))
    with pytest.raises(NotFoundError):
        s.read_bytes(f"s3://{s3_bucket}/missing")
    assert flaky_s3.requests <= 2  # one GET (and at most one HEAD), no retry loop


# --- model cache ----------------------------------------------------------------------------


def _upload_model(storage, prefix):
    files = {"model_index.json": b"{}", "unet/config.json": b'{"a": 1}', "unet/w.bin": b"w" * 4096}
    for rel, data in files.items():
        storage.write_bytes(f"{prefix}/{rel}", data)
    return files


def test_fetch_model_dir_downloads_once(s3_bucket, s3_storage_options, flaky_s3, tmp_path):
    files = _upload_model(Storage(s3_storage_options), f"s3://{s3_bucket}/models/m1")
    s = Storage(s3_storage_options.replace(endpoint_url=flaky_s3.url))
    results, errors = [], []

    def fetch():
        try:
            results.append(fetch_model_dir(f"s3://{s3_bucket}/models/m1/", s, tmp_path))
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    path = results[0]
    for rel, data in files.items():
        assert (path / rel).read_bytes() == data
    gets = flaky_s3.requests
    again = fetch_model_dir(f"s3://{s3_bucket}/models/m1", s, tmp_path)
    assert again == path and flaky_s3.requests == gets  # cached: no request at all
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    assert gets <= 2 * (len(files) + 2)  # one download, not four


def test_fetch_model_dir_local_and_missing(tmp_path, s3_bucket, s3_storage_options):
    (tmp_path / "local_model").mkdir()
    s = Storage(s3_storage_options)
    assert fetch_model_dir(str(tmp_path / "local_model"), s) == tmp_path / "local_model"
    with pytest.raises(NotFoundError):
        fetch_model_dir(f"s3://{s3_bucket}/models/none", s, tmp_path / "cache")
    assert not any(
        p.name.startswith(".") and "tmp" in p.name for p in (tmp_path / "cache").iterdir()
    )
    with pytest.raises(UriRejectedError):
        fetch_model_dir("http://169.254.169.254/model", s, tmp_path)


# --- http(s), only with allow_http ----------------------------------------------------------


@pytest.fixture
def http_site():
    """A local web server: /a.png, /redirect-ok -> /a.png, /redirect-metadata -> 169.254.169.254,
    /flaky (503 once), anything else 404."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"flaky": 1}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            routes = {"/redirect-ok": "/a.png", "/redirect-metadata": "http://169.254.169.254/x"}
            if self.path in routes:
                self.send_response(302)
                self.send_header("Location", routes[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path == "/flaky" and state["flaky"]:
                state["flaky"] -= 1
                code, body = 503, b"busy"
            elif self.path in ("/a.png", "/flaky"):
                code, body = 200, b"image-bytes"
            else:
                code, body = 404, b"no"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_reads_hold_the_policy_on_every_redirect(http_site):
    s = Storage(StorageOptions(allow_http=True, backoff_s=0.01))
    assert s.read_bytes(f"{http_site}/a.png") == b"image-bytes"
    assert s.read_bytes(f"{http_site}/a.png", 0, 5) == b"image"
    assert s.read_bytes(f"{http_site}/redirect-ok") == b"image-bytes"
    with pytest.raises(UriRejectedError, match="169.254.169.254"):
        s.read_bytes(f"{http_site}/redirect-metadata")
    with pytest.raises(NotFoundError, match="/missing"):
        s.read_bytes(f"{http_site}/missing")
    assert s.read_bytes(f"{http_site}/flaky") == b"image-bytes"  # a 503, then retried
    with pytest.raises(UriRejectedError, match="allow_http"):
        Storage(StorageOptions()).read_bytes(f"{http_site}/a.png")


def test_http_host_resolving_to_metadata_address_is_refused(monkeypatch):
    import socket

    def fake_resolve(host, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_resolve)
    s = Storage(StorageOptions(allow_http=True))
    with pytest.raises(UriRejectedError, match="resolves to a link-local"):
        s.read_bytes("http://innocent.example/a.png")
