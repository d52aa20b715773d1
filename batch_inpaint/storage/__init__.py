"""The one storage layer: the URI policy (uri), where and how to reach object storage (options),
which errors are transient (transient), confined atomic local writes (local), reads, writes and
listings with retries (store; whole-object S3 GETs, PUTs and deletes through one client per
process: s3_objects), guarded http(s) reads (http_get) and the model weight cache (model_cache).
Imports run one way: uri <- options, transient, local, http_get, s3_objects <- store <-
model_cache."""

from batch_inpaint.storage.model_cache import fetch_model_dir
from batch_inpaint.storage.options import StorageOptions
from batch_inpaint.storage.store import Storage, pyarrow_filesystem
from batch_inpaint.storage.uri import check_uri, is_local, output_key, redact_uri

__all__ = [
    "Storage",
    "StorageOptions",
    "check_uri",
    "fetch_model_dir",
    "is_local",
    "output_key",
    "pyarrow_filesystem",
    "redact_uri",
]
