"""Model weights under an object-storage prefix, copied once per machine into a local cache.

Safe against concurrent workers on one machine: an fcntl lock per model, a download into a temp
dir beside the final one, a completion marker written inside it, and an atomic rename."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batch_inpaint.errors import NotFoundError, StorageError
from batch_inpaint.storage.store import Storage
from batch_inpaint.storage.uri import is_local, local_path, redact_uri

MARKER = ".batch-inpaint-complete"


def default_cache_dir() -> Path:
    env = os.environ.get("BATCH_INPAINT_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "batch-inpaint"
    return base / "models"


def fetch_model_dir(
    uri: str, storage: Storage | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local directory with the model under `uri`: a local path is returned as it is; an
    object-storage prefix is downloaded once into cache_dir/<hash of URI and endpoint>."""
    storage = storage or Storage()
    uri = storage.check(uri)
    if is_local(uri):
        path = Path(local_path(uri))
        if not path.is_dir():
            raise NotFoundError(f"model directory {path} does not exist")
        return path
    return cached_copy(
        uri.rstrip("/"), storage, cache_dir, lambda tmp: _download_tree(uri, tmp, storage)
    )


def cached_copy(
    key: str, storage: Storage, cache_dir: str | os.PathLike | None, fill: Callable[[Path], str]
) -> Path:
    """cache_dir/<hash of `key` and the endpoint>, filled once per machine by `fill(folder)`,
    which returns the completion marker's text. Workers on one machine wait on an fcntl lock;
    a copy without its marker is thrown away and made again."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ident = f"{key}\n{storage.options.endpoint_url or ''}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:20]
    final = root / digest
    if (final / MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root / f".{digest}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # the other workers wait here, then find it done
        try:
            if (final / MARKER).is_file():
                return final
            if final.exists():  # a copy without its marker: not ours to trust
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest}.tmp-"))
            try:
                (tmp / MARKER).write_text(fill(tmp))
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return final


def _download_tree(uri: str, dest: Path, storage: Storage) -> str:
    prefix = uri.rstrip("/") + "/"
    files = [f for f in storage.list(prefix) if f.startswith(prefix)]
    if not files:
        raise NotFoundError(f"{redact_uri(uri)}: no model files under this prefix")
    root = dest.resolve()
    jobs = []
    for f in files:
        rel = f[len(prefix) :]
        target = (dest / rel).resolve()
        if root not in target.parents:  # a key with '..' must not write outside the cache
            raise StorageError(f"{redact_uri(f)}: key escapes the model directory; refusing it")
        target.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((f, target))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        list(pool.map(lambda job: storage.download(*job), jobs))
    total = sum(t.stat().st_size for _, t in jobs)
    info = {
        "uri": redact_uri(uri),
        "files": len(jobs),
        "bytes": total,
        "seconds": round(time.monotonic() - start, 3),
    }
    return json.dumps(info)
