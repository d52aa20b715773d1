"""The output contract's checks, made on the driver before any cluster work.

- The output must not equal, contain or lie inside a location the manifest reads: the manifest
  itself (a file, or a folder of parts) and the folders its image and mask URIs point into.
- An output location belongs to batch-inpaint once a run of it has written the ownership marker
  `_BATCH_INPAINT` there. A first run into a location that holds anything else is refused unless
  `allow_non_empty_output` is set, and even then only when none of the names the job writes exists
  yet: the job then writes only its own names, so it can never overwrite or delete the user's files.
- Locations compare as written and resolved: local paths with every symlink resolved, object URIs
  with empty, '.' and '..' segments folded, so a symlink can't hide an output over its inputs.
- An object-storage output with an empty, '.' or '..' segment ('s3://b//p') is refused
  (storage/uri.py, output_uri_problem): listings fold them, so it could never resume.
- A `_LOCK` that is not a lock of the job (JSON with its owner and times) is a user's file: the
  run is refused, naming it, so it is never taken over as a stale lock (job/driver/lock.py) and deleted.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint import __version__
from batch_inpaint.errors import ConfigError, InpaintError, NotFoundError
from batch_inpaint.job.io.output_folder import (  # the output's names (job/io/output_folder.py)
    JOB_JSON,
    LOCK,
    MANIFESTS,
    MARKER,
    OWN_NAMES,
    OutputFolder,
)
from batch_inpaint.storage.uri import (
    is_local,
    join,
    local_path,
    output_uri_problem,
    redact_uri,
    resolve,
)

# lock.py's create-only takeover markers: `_LOCK.takeover-` and 16 hex digits
_TAKEOVER = re.compile(r"_LOCK\.takeover-[0-9a-f]{16}")
# a lock body of the job has an owner and a time (acquired_at and expires_at before 0.3)
_LOCK_TIMES = ("renewed_at", "acquired_at", "expires_at")


def _keys(uri: str) -> tuple[str, str]:
    """Two comparable forms of a location, each with one trailing '/' so that prefixes compare by
    whole segments: for local ones the absolute path as written and the path with every symlink
    resolved; for object storage the URI as given and with empty, '.' and '..' segments folded
    (a store may or may not fold them: both forms are checked)."""
    if is_local(uri):
        path = local_path(uri)
        return path.rstrip("/") + "/", os.path.realpath(path).rstrip("/") + "/"
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    folded = posixpath.normpath("/" + key).strip("/")
    return uri.rstrip("/") + "/", f"{scheme.lower()}://{bucket}/{folded}".rstrip("/") + "/"


def input_locations(manifest: str, base: str, uris: pa.ChunkedArray | pa.Array) -> list[str]:
    """The manifest and the distinct folders (prefixes) that the given image/mask URIs read."""
    arr = pc.drop_null(uris.combine_chunks() if isinstance(uris, pa.ChunkedArray) else uris)
    arr = pc.unique(pc.cast(arr, pa.string()))
    folders = set(pc.unique(pc.replace_substring_regex(arr, r"/[^/]*$", "")).to_pylist())
    bare = {u for u in arr.to_pylist() if "/" not in u}  # a file name alone: the base folder
    found = {resolve(f, base) for f in folders if f and f not in bare} | (
        {base or "."} if bare else set()
    )
    return [manifest, *sorted(found)]


def check_output_location(output: str, inputs: list[str]) -> None:
    """ConfigError naming both locations when the output equals, contains or lies inside one of
    the inputs; writing there could overwrite or delete what the job reads."""
    outs = _keys(output)
    own_manifests = _keys(join(output, MANIFESTS))  # jobs/clean.py writes its manifests there
    for loc in inputs:
        keys = _keys(loc)
        if loc == inputs[0] and any(
            k.startswith(m) for k, m in zip(keys, own_manifests, strict=True)
        ):
            continue
        for n, (out, key) in enumerate(zip(outs, keys, strict=True)):
            if out == key:
                how = "is"
            elif key.startswith(out):
                how = "contains"
            elif out.startswith(key):
                how = "lies inside"
            else:
                continue
            via = ""
            if n and is_local(output):
                via = f" (through a symbolic link: {out.rstrip('/')} {how} {key.rstrip('/')})"
            raise ConfigError(
                f"output {redact_uri(output)} {how} {redact_uri(loc)}{via}, which the manifest "
                "reads; writing there could overwrite or delete inputs. Choose an output location "
                "apart from the manifest and its images and masks"
            )


def check_owner(storage, output: str, allow_non_empty: bool) -> str:
    """'ours' when a run of batch-inpaint made the output ('legacy' when a version from before
    the marker did: claimed like a new one, so its whole listing happens once), 'new' when it
    is empty or absent (the marker is written by `claim`), 'adopted' when allow_non_empty lets a first run share a
    non-empty location; ConfigError otherwise. Listing failures other than 'not found' stop here."""
    why = output_uri_problem(output)
    if why:
        raise ConfigError(f"output {why}")
    if OutputFolder(storage, output).exists(MARKER):
        check_lock_file(storage, output)
        return "ours"
    try:
        found = storage.list(output)
    except NotFoundError:
        return "new"
    if not found:
        return "new"
    root = output.rstrip("/") + "/"
    rels = {_rel(u, root, output) for u in found}
    names = sorted({r.split("/", 1)[0] for r in rels})
    if LOCK in names:
        check_lock_file(storage, output, folder=any(r.startswith(LOCK + "/") for r in rels))
    # another run's lock and takeover markers: the lock decides
    names = [n for n in names if n != LOCK and not _TAKEOVER.fullmatch(n)]
    if not names:
        return "new"
    if _legacy_output(storage, output, names):
        return "legacy"  # ours, from before the marker: the run claims it, so this listing is once
    if not allow_non_empty:
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise ConfigError(
            f"output {redact_uri(output)} is not empty ({shown}) and no run of batch-inpaint "
            "made it; choose an empty location, or pass --allow-non-empty-output to add this "
            "job's files beside what is there (it never overwrites or deletes them)"
        )
    clash = sorted(set(names) & set(OWN_NAMES))
    if clash:
        raise ConfigError(
            f"output {redact_uri(output)} already holds {clash}, names this job writes, and no "
            "run of batch-inpaint made them; even with --allow-non-empty-output the job will not "
            "overwrite them. Choose another location"
        )
    return "adopted"


def check_lock_file(storage, output: str, folder: bool = False) -> None:
    """ConfigError when `{output}/_LOCK` exists and is not a lock that a run of the job wrote
    (or is a folder): a user's file of that name would be taken over as a stale lock
    (overwritten), then deleted."""
    uri = OutputFolder(storage, output).lock
    try:
        raw = storage.read_bytes(uri)
    except NotFoundError:
        if not folder:
            return
        raw = b""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if (
        isinstance(body, dict)
        and isinstance(body.get("owner"), str)
        and any(isinstance(body.get(k), (int, float)) for k in _LOCK_TIMES)
    ):
        return
    what = "a folder" if folder else f"{len(raw)} bytes"
    raise ConfigError(
        f"output {redact_uri(output)} holds {LOCK} ({what}), which is not a lock that "
        "a run of batch-inpaint wrote; the job takes its lock under that name and would overwrite, "
        f"then delete it. Move or rename {redact_uri(uri)}, or choose another output location"
    )


def claim(storage, output: str, run_id: str, state: str) -> None:
    """Write the ownership marker (once: it is never rewritten)."""
    body = {"tool": "batch-inpaint", "version": __version__, "run_id": run_id,
            "created_at": time.time(), "adopted": state == "adopted"}  # fmt: skip
    storage.write_bytes(OutputFolder(storage, output).marker, json.dumps(body).encode(),
                        overwrite=False)  # fmt: skip


def _rel(uri: str, root: str, output: str) -> str:
    if is_local(output):
        return local_path(uri)[len(local_path(output).rstrip("/")) + 1 :]
    return uri[len(root) :]


def _legacy_output(storage, output: str, names: list[str]) -> bool:
    """An output made by a version of batch-inpaint from before the marker: its job.json."""
    if JOB_JSON not in names:
        return False
    try:
        body = json.loads(OutputFolder(storage, output).read(JOB_JSON))
    except (InpaintError, ValueError):
        return False
    return isinstance(body, dict) and {"run_id", "config", "versions"} <= set(body)
