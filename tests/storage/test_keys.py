"""Output keys can't collide as a file and a folder; stored URIs never keep a signature."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_inpaint.config import EXTENSIONS
from batch_inpaint.storage import output_key, redact_uri
from batch_inpaint.storage.uri import OUTPUT_EXTENSIONS

SUFFIXES = (".png", ".jpg", ".webp")


def test_every_output_format_extension_is_known_to_output_key():
    assert set(EXTENSIONS.values()) <= set(OUTPUT_EXTENSIONS)


def test_file_and_folder_never_collide_for_the_reported_pair():
    assert output_key("sub", ".png") == "sub.png"  # safe ids keep their names
    other = output_key("sub.png/x", ".png")
    assert not other.startswith("sub.png/") and "~" in other
    assert other.startswith("sub_png/")
    # also across formats and cases: a folder never ends like any output file
    for rid in ["sub.jpg/x", "a/SUB.WEBP/x", "b.jpeg/c/d", "x.tif/y"]:
        key = output_key(rid, ".tif")
        folders = key.split("/")[:-1]
        assert not any(f.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".tif"))
                       for f in folders), key  # fmt: skip


def test_ids_already_safe_keep_their_keys():
    for rid in ["cat-001", "sub/dir/cat.v2", "a/b/c", "photos/2024/img_1.png", "x.png.bak/y"]:
        assert output_key(rid, ".png") == rid + ".png"


_SEGMENTS = st.sampled_from(
    [
        "sub",
        "sub.png",
        "sub.jpg",
        "SUB.PNG",
        "a.webp",
        "x",
        "x.jpeg",
        "é.png",
        ".png",
        "a b",
        "sub.png.png",
        "sub_png",
        "x~1",
    ]  # fmt: skip
) | st.text(min_size=1, max_size=6)
_IDS = st.lists(_SEGMENTS, min_size=1, max_size=4).map("/".join)


@settings(max_examples=300, deadline=None)
@given(st.data(), _IDS, st.sampled_from(SUFFIXES), st.sampled_from(SUFFIXES))
def test_no_key_is_a_folder_of_another(data, a, sa, sb):
    tail = data.draw(_IDS)
    b = data.draw(  # random, or built to attack a's file: the id 'sub.png/x' for id 'sub'
        st.sampled_from([data.draw(_IDS), f"{a}{sa}/{tail}", f"{output_key(a, sa)}/{tail}"])
    )
    ka, kb = output_key(a, sa).lower(), output_key(b, sb).lower()
    assert not kb.startswith(ka + "/") and not ka.startswith(kb + "/"), (a, b, ka, kb)
    if a != b:
        assert ka != kb or sa != sb  # distinct ids: distinct files (case-insensitively too)


@pytest.mark.parametrize(
    "uri, secrets",
    [
        (  # AWS SigV4 presigned
            "https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAEXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
            "&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLETOKEN&X-Amz-Signature=deadbeef1234",
            ["AKIAEXAMPLE", "FQoGZXIvYXdzEXAMPLETOKEN", "deadbeef1234"],
        ),
        (  # AWS SigV2 presigned
            "https://b.s3.amazonaws.com/k.png?AWSAccessKeyId=AKIAV2KEY&Expires=1700000000"
            "&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D",
            ["AKIAV2KEY", "vjbyPxybdZaNmGa"],
        ),
        (  # GCS V4 signed URL
            "https://storage.googleapis.com/b/k.png?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=sa%40proj.iam.gserviceaccount.com%2F20240101%2Fauto"
            "&X-Goog-Date=20240101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host"
            "&X-Goog-Signature=0a1b2c3d4e5f",
            ["sa%40proj", "0a1b2c3d4e5f"],
        ),
        (  # Azure SAS
            "https://acct.blob.core.windows.net/c/k.png?sv=2022-11-02&ss=b&srt=o&sp=r"
            "&se=2030-01-01T00:00:00Z&sig=AbCdEf%2BGhIjK%3D",
            ["AbCdEf"],
        ),
        ("https://user:hunter2@host/k.png", ["hunter2", "user:"]),
        ("https://host/k.png?width=3;Signature=semicolon-sep", ["semicolon-sep"]),
        ("https://host/k.png?X-Amz-%53ignature=encoded-name", ["encoded-name"]),
        ("https://host/k.png#access_token=in-fragment", ["in-fragment"]),
        ("HTTPS://host/k.png?SIGNATURE=upper", ["upper"]),
    ],
)
def test_redact_uri_removes_every_presigned_form(uri, secrets):
    shown = redact_uri(uri)
    for secret in secrets:
        assert secret not in shown, (secret, shown)
    assert shown.split("?")[0].split("#")[0].endswith("/k.png")  # still says which object
    assert redact_uri(shown) == shown  # stable


def test_redact_uri_keeps_harmless_uris_exactly():
    for uri in ["s3://b/k.png?versionId=3", "https://host/a.png?width=3&h=4", "/local/a?b=1",
                "gs://b/k", "https://host/a%20b.png"]:  # fmt: skip
        assert redact_uri(uri) == uri
    shown = redact_uri("https://b/k.png?X-Amz-Expires=3600&X-Amz-Signature=abc")
    assert "X-Amz-Expires=3600" in shown and "X-Amz-Signature=***" in shown
