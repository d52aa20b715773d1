"""URI rules applied to every URI that batch-inpaint touches, and the output key of a row id.
Kept apart from storage.py so that they import nothing heavy (no fsspec, no pyarrow)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import unicodedata
from typing import TYPE_CHECKING
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from batch_inpaint.errors import ConfigError, UriRejectedError

if TYPE_CHECKING:
    from batch_inpaint.storage.options import StorageOptions

OBJECT_SCHEMES = ("s3", "gs", "memory")
HTTP_SCHEMES = ("http", "https")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# cloud metadata endpoints: never reachable through an image URI, even with allow_http
_BLOCKED_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
# query/fragment parameter names whose values are secrets: SigV4 X-Amz-Signature/-Credential/
# -Security-Token, SigV2 Signature/AWSAccessKeyId, GCS X-Goog-Signature/-Credential, Azure SAS sig,
# and the usual token/key/password/secret/auth names (matched anywhere in the decoded name)
_SECRET_QUERY = re.compile(r"signature|credential|token|key|sig|password|secret|auth|session", re.I)


def uri_scheme(uri: str) -> str:
    """'s3', 'file', 'http', ...; '' for a bare local path."""
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else ""


def is_local(uri: str) -> bool:
    return uri_scheme(uri) in ("", "file")


def local_path(uri: str) -> str:
    """The absolute local path of a bare path or file:// URI."""
    if uri_scheme(uri) == "file":
        uri = unquote(urlsplit(uri).path)
    return os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    """base/part/part for URIs and local paths alike (no os.path: URIs always use '/')."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def resolve(uri: str, base: str | None) -> str:
    """A manifest URI as the job reads it: absolute URIs and paths as they are, relative ones
    against `base` (the manifest's folder; the bundled samples use relative paths)."""
    if not base or uri_scheme(uri) or uri.startswith("/"):
        return uri
    return join(base, uri)


def manifest_base(manifest: str) -> str:
    """The folder a manifest's relative URIs resolve against: its own folder for a .parquet file
    ('' for a bare file name: the working directory), the folder itself for a folder of parts."""
    m = manifest.rstrip("/")
    if m.endswith(".parquet"):
        return m.rsplit("/", 1)[0] if "/" in m else ""
    return m


def same_location(uri: str) -> str:
    """A form of the URI that compares equal for the same object: local paths and file:// URIs
    as absolute paths, other URIs as given."""
    return local_path(uri) if is_local(uri) else uri


def redact_uri(uri: str) -> str:
    """The URI without user:password@ and with the value of every secret parameter (presigned URL
    signatures, credentials, tokens; see _SECRET_QUERY) in the query or fragment replaced by
    '***'. Parameters may be separated by '&' or ';'; names are matched decoded, so an encoded
    name does not slip through. Everything else is kept exactly as given."""
    if not isinstance(uri, str) or not uri_scheme(uri):
        return str(uri)
    try:
        u = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    netloc = u.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query, fragment = _redact_params(u.query), _redact_params(u.fragment)
    if (netloc, query, fragment) == (u.netloc, u.query, u.fragment):
        return uri  # nothing secret: keep it exactly as given
    return urlunsplit((u.scheme, netloc, u.path, query, fragment))


def _redact_params(text: str) -> str:
    if "=" not in text:
        return text
    out = []
    for part in re.split(r"([&;])", text):
        name, eq, value = part.partition("=")
        if eq and value and _SECRET_QUERY.search(unquote_plus(name)):
            part = f"{name}=***"
        out.append(part)
    return "".join(out)


def check_uri(uri: str, options: StorageOptions | None = None) -> str:
    """The URI unchanged if the policy allows it, else UriRejectedError naming the URI and the rule:
    bare paths, file, s3, gs and memory; http(s) only with allow_http and never to link-local or
    metadata hosts; no fsspec '::' chaining; s3/gs buckets in allowed_buckets when that is set."""
    if not isinstance(uri, str) or not uri.strip():
        raise UriRejectedError(f"empty URI {uri!r}: give a local path or a URI such as s3://b/k")
    shown = redact_uri(uri)
    if "::" in re.sub(r"\[[0-9A-Fa-f:.%]+\]", "", uri):  # IPv6 literals aside
        raise UriRejectedError(f"{shown!r}: chained fsspec URLs ('::') are not allowed")
    if "\x00" in uri:
        raise UriRejectedError(f"{shown!r}: NUL byte in URI")
    scheme = uri_scheme(uri)
    if scheme in ("", "file"):
        return uri
    allow_http = bool(options and options.allow_http)
    if scheme in HTTP_SCHEMES:
        if not allow_http:
            raise UriRejectedError(
                f"{shown!r}: http(s) URIs are off by default; pass allow_http=True "
                "(CLI: --allow-http) to read images over http(s)"
            )
        host = (urlsplit(uri).hostname or "").lower()
        if not host or blocked_host(host):
            raise UriRejectedError(f"{shown!r}: host {host!r} is a link-local/metadata address")
        return uri
    if scheme not in OBJECT_SCHEMES:
        allowed = ", ".join(("file", *OBJECT_SCHEMES, *(HTTP_SCHEMES if allow_http else ())))
        raise UriRejectedError(f"{shown!r}: scheme {scheme!r} is not allowed (allowed: {allowed})")
    if scheme in ("s3", "gs"):
        bucket = urlsplit(uri).netloc
        if not bucket:
            raise UriRejectedError(f"{shown!r}: no bucket name")
        buckets = options.allowed_buckets if options else None
        if buckets is not None and bucket not in buckets:
            raise UriRejectedError(
                f"{shown!r}: bucket {bucket!r} is not in allowed_buckets {list(buckets)}"
            )
    return uri


def output_uri_problem(uri: str) -> str | None:
    """Why an object-storage URI can't be an output: an empty, '.' or '..' segment in its key
    ('s3://b//p'). The store keeps such a key as written ('/p/...') but listings show it folded,
    so a run there never finds its own results and never resumes. Refused rather than folded:
    folding would write somewhere else than the URI says. None when the URI is fine (local paths
    always are: the OS folds them the same way for every call)."""
    if uri_scheme(uri) not in OBJECT_SCHEMES:
        return None
    key = uri.split("://", 1)[1].partition("/")[2]
    key = key[:-1] if key.endswith("/") else key
    if not key or not any(seg in ("", ".", "..") for seg in key.split("/")):
        return None
    scheme, bucket = uri_scheme(uri), uri.split("://", 1)[1].partition("/")[0]
    folded = "/".join(seg for seg in key.split("/") if seg not in ("", "."))
    return (
        f"{redact_uri(uri)} has an empty, '.' or '..' segment in its key: object storage keeps it "
        "in the key, but listings show it folded, so a run could never find its own results "
        f"(nor resume). Write it without them, e.g. {scheme}://{bucket}/{folded}"
    )


def blocked_host(host: str) -> bool:
    if host in _BLOCKED_HOSTS:
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    return ip.is_link_local or ip.is_unspecified or str(ip) == "fd00:ec2::254"


# --- output keys ---------------------------------------------------------------------------------
# extensions of every output format (config.EXTENSIONS) and their spellings: a folder of a key
# never ends like one of these, so it can't also be another id's output file
OUTPUT_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
MAX_KEY_CHARS = 150
MAX_SEGMENT_CHARS = 80
HASH_CHARS = 12
_SAFE_SEGMENT = re.compile(r"[a-z0-9_][a-z0-9._-]*")


def output_key(row_id: str, suffix: str = "") -> str:
    """The object key (relative, '/'-separated) for a row id, plus `suffix` (e.g. '.png').

    An id that is already safe (lowercase ASCII letters, digits, '.', '_', '-', '/'-separated
    segments, no '.'/'..'/empty segment, at most 150 characters) is its own key. Any other id is
    sanitised (unicode folded to ASCII, other characters to '_', '..' and empty segments dropped,
    lengths capped) and gets '~' plus 12 hex digits of the id's SHA-256. Safe keys never contain
    '~' and sanitised keys always do, so two different ids never share a key, also on
    case-insensitive filesystems.

    No key is both a file and another key's folder: pass a suffix (a key's folders are the id's
    non-final segments, so 'a' and 'a/b' give 'a.png' and 'a/b.png'), and an id with a non-final
    segment that ends like an output file ('.png', '.jpg', '.jpeg', '.webp' or the suffix, any
    case: 'sub.png/x', which would make 'images/sub.png' a folder while id 'sub' makes it a file)
    is not safe: it is sanitised, and such a segment's last '.' becomes '_' ('sub_png/x~<hash>').
    Files end in '.<ext>' and folders never do, whatever format each run wrote."""
    if not isinstance(row_id, str) or not row_id:
        raise ConfigError(f"row id must be a non-empty string, got {row_id!r}")
    if suffix and not re.fullmatch(r"\.[a-z0-9]{1,10}", suffix):
        raise ConfigError(f"output suffix must look like '.png', got {suffix!r}")
    exts = tuple(f".{e}" for e in OUTPUT_EXTENSIONS) + ((suffix,) if suffix else ())
    segments = row_id.split("/")
    if (
        len(row_id) <= MAX_KEY_CHARS
        and all(
            len(s) <= MAX_SEGMENT_CHARS and _SAFE_SEGMENT.fullmatch(s) and not s.endswith(".")
            for s in segments
        )
        and not any(s.endswith(exts) for s in segments[:-1])
    ):
        return row_id + suffix
    ascii_id = unicodedata.normalize("NFKD", row_id).encode("ascii", "ignore").decode("ascii")
    clean = []
    for seg in ascii_id.split("/"):
        seg = re.sub(r"[^A-Za-z0-9._-]+", "_", seg)
        seg = re.sub(r"\.{2,}", "_", seg).strip("._-")[:MAX_SEGMENT_CHARS].rstrip(".")
        if seg:
            clean.append(seg)
    for i, seg in enumerate(clean[:-1]):
        if seg.lower().endswith(exts):  # a folder must not look like an output file
            clean[i] = seg[: seg.rindex(".")] + "_" + seg[seg.rindex(".") + 1 :]
    key = "/".join(clean)[-(MAX_KEY_CHARS - HASH_CHARS - 1) :].lstrip("/.")
    digest = hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{key or 'id'}~{digest}{suffix}"
