"""The output contract's checks, made on the driver before any cluster work.

- The output must not equal, contain or lie inside a location the manifest reads: the manifest
  itself (a file, or a folder of parts) and the folders its image and mask URIs point into.
- An output location belongs to batch-inpaint once a run of it has written the ownership marker
  `_BATCH_INPAINT` there. A first run into a location that holds anything else is refused unless
  `allow_non_empty_output` is set, and even then only when none of the names the job writes exists
  yet: the job then writes only its own names, so it can never overwrite or delete the user's files.
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint import __version__
from batch_inpaint.errors import ConfigError, InpaintError, NotFoundError
from batch_inpaint.storage.uri import is_local, join, local_path, redact_uri, resolve

MARKER = "_BATCH_INPAINT"
# Every name the job writes directly under its output (clean.py adds manifests/).
OWN_NAMES = (
    "images", "metadata", "manifests", "job.json", "run.json", "report.html", "_SUCCESS", "_LOCK",
    "masks", MARKER,
)  # fmt: skip


def _key(uri: str) -> str:
    """A comparable form of a location: absolute path for local ones, scheme://bucket/key for
    object storage, always with one trailing '/' so that prefixes compare by whole segments."""
    if is_local(uri):
        return local_path(uri).rstrip("/") + "/"
    return uri.rstrip("/") + "/"


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
    out = _key(output)
    own_manifests = _key(join(output, "manifests"))  # jobs/clean.py writes its manifests there
    for loc in inputs:
        key = _key(loc)
        if loc == inputs[0] and key.startswith(own_manifests):
            continue
        if out == key:
            how = "is"
        elif key.startswith(out):
            how = "contains"
        elif out.startswith(key):
            how = "lies inside"
        else:
            continue
        raise ConfigError(
            f"output {redact_uri(output)} {how} {redact_uri(loc)}, which the manifest reads; "
            "writing there could overwrite or delete inputs. Choose an output location apart from "
            "the manifest and its images and masks"
        )


def check_owner(storage, output: str, allow_non_empty: bool) -> str:
    """'ours' when a run of batch-inpaint made the output ('legacy' when a version from before
    the marker did: claimed like a new one, so its whole listing happens once), 'new' when it
    is empty or absent (the marker is written by `claim`), 'adopted' when allow_non_empty lets a first run share a
    non-empty location; ConfigError otherwise. Listing failures other than 'not found' stop here."""
    marker = join(output, MARKER)
    if storage.exists(marker):
        return "ours"
    try:
        found = storage.list(output)
    except NotFoundError:
        return "new"
    if not found:
        return "new"
    root = output.rstrip("/") + "/"
    names = sorted({_top_name(u, root, output) for u in found})
    names = [n for n in names if not n.startswith("_LOCK")]  # another run's lock: it decides
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


def claim(storage, output: str, run_id: str, state: str) -> None:
    """Write the ownership marker (once: it is never rewritten)."""
    body = {"tool": "batch-inpaint", "version": __version__, "run_id": run_id,
            "created_at": time.time(), "adopted": state == "adopted"}  # fmt: skip
    storage.write_bytes(join(output, MARKER), json.dumps(body).encode(), overwrite=False)


def _top_name(uri: str, root: str, output: str) -> str:
    if is_local(output):
        rel = local_path(uri)[len(local_path(output).rstrip("/")) + 1 :]
    else:
        rel = uri[len(root) :]
    return rel.split("/", 1)[0]


def _legacy_output(storage, output: str, names: list[str]) -> bool:
    """An output made by a version of batch-inpaint from before the marker: its job.json."""
    if "job.json" not in names:
        return False
    try:
        body = json.loads(storage.read_bytes(join(output, "job.json")))
    except (InpaintError, ValueError):
        return False
    return isinstance(body, dict) and {"run_id", "config", "versions"} <= set(body)
