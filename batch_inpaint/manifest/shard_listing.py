"""Which shards a source names, and the name each keeps under the output's `data/`.

A source is one of:
- a shard file (`s3://b/shards/00000.tar`, `train-00000-of-00004.parquet`);
- a folder or prefix: every shard file under it, sorted, subfolders included (names starting
  with `.` or `_` are not data: temp files, `_SUCCESS`);
- a pattern: braces as webdataset and img2dataset write them (`shards/{00000..00099}.tar`,
  `{train,val}/{0..9}.tar`, expanded with `braceexpand`, in that order), or `*`, `?`, `[..]`
  globs in the file names (`data/train-*.parquet`);
- (Python API) a list of shard files.

A shard's name is its path below the source's root (the folder before the first pattern
character; a single file's own folder), so `OUTPUT/data/<name>` keeps the input's layout.

One listing of the root finds every shard (a LIST call per 1,000 objects on object storage);
a pattern naming shards that are not there is refused (exit 2) unless `missing_ok` (a growing
dataset's pattern names shards yet to come)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from braceexpand import braceexpand

from batch_inpaint.errors import ConfigError, NotFoundError
from batch_inpaint.storage.uri import is_local, local_path, redact_uri

SHARD_SUFFIXES = (".tar", ".parquet")
_SPECIAL = re.compile(r"[{}*?\[]")


@dataclass(frozen=True)
class Shard:
    uri: str  # where it is read from
    name: str  # its path below the source's root: the output shard is OUTPUT/data/<name>


def is_pattern(source: str) -> bool:
    return _SPECIAL.search(source) is not None


def shard_root(source: str | Sequence[str]) -> str:
    """The folder the source's shards are under: what the output must stay away from."""
    if not isinstance(source, str):
        roots = {shard_root(s) for s in source}
        return _common_folder(sorted(roots))
    match = _SPECIAL.search(source)
    if match:
        return source[: match.start()].rsplit("/", 1)[0] if "/" in source[: match.start()] else ""
    if source.lower().endswith(SHARD_SUFFIXES):
        return source.rsplit("/", 1)[0] if "/" in source else ""
    return source.rstrip("/")


def expand(source: str) -> list[str]:
    """A brace pattern's names in webdataset's order (a source without braces: itself)."""
    return list(braceexpand(source)) if "{" in source else [source]


def list_shards(
    storage,
    source: str | Sequence[str],
    suffixes: tuple[str, ...] = SHARD_SUFFIXES,
    *,
    missing_ok: bool = False,
) -> list[Shard]:
    """The shards a source names, in order (see the module's docstring)."""
    if not isinstance(source, str):
        uris = [_absolute(u) for u in source]
        root = shard_root(uris)
        return [Shard(uri, _below(root, uri)) for uri in _exact(storage, uris, missing_ok)]
    source = _absolute(source)
    root = shard_root(source)
    if not is_pattern(source) and source.lower().endswith(suffixes):
        found = _exact(storage, [source], missing_ok)
    elif is_pattern(source):
        wanted = expand(source)
        present = _listing(storage, root, suffixes)
        found, missing, have = {}, [], set(present)
        for name in wanted:
            hits = _glob_hits(name, present) if is_pattern(name) else [name] * (name in have)
            found.update(dict.fromkeys(hits))  # in order, each once
            if not hits and not is_pattern(name):
                missing.append(name)
        if missing and not missing_ok:
            raise ConfigError(_missing(source, missing, len(wanted)))
    else:
        found = _listing(storage, source.rstrip("/"), suffixes)
        if not found and not missing_ok:
            raise ConfigError(
                f"{redact_uri(source)}: no shards ({', '.join(suffixes)} files) in this folder"
            )
    return [Shard(uri, _below(root, uri)) for uri in list(found)]


def _absolute(uri: str) -> str:
    # local sources compare with the listing's absolute paths
    return local_path(uri) if is_local(uri) else uri


def _listing(storage, folder: str, suffixes: tuple[str, ...]) -> list[str]:
    try:
        found = storage.list(folder or ".", suffixes=suffixes)
    except NotFoundError:
        return []
    folder = folder.rstrip("/")
    keep = []
    for uri in found:
        rel = uri[len(folder) + 1 :] if folder else uri
        if not any(part.startswith((".", "_")) for part in rel.split("/")):
            keep.append(uri)
    return keep


def _glob_hits(pattern: str, uris) -> list[str]:
    if not is_pattern(pattern):
        return []
    return sorted(u for u in uris if fnmatch.fnmatchcase(u, pattern))


def _exact(storage, uris: list[str], missing_ok: bool) -> list[str]:
    present = [u for u in uris if storage.exists(u)]
    missing = [u for u in uris if u not in present]
    if missing and not missing_ok:
        raise ConfigError(_missing("the shard list", missing, len(uris)))
    return present


def _missing(source: str, missing: list[str], wanted: int) -> str:
    shown = ", ".join(redact_uri(u) for u in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (
        f"{redact_uri(source)}: {len(missing)} of its {wanted} shards are not there "
        f"({shown}{more}); check the pattern"
    )


def _below(root: str, uri: str) -> str:
    if root and uri.startswith(root.rstrip("/") + "/"):
        return uri[len(root.rstrip("/")) + 1 :]
    return uri.rsplit("/", 1)[-1]


def _common_folder(folders: list[str]) -> str:
    if not folders:
        return ""
    parts = [f.split("/") for f in folders]
    common = []
    for segment in zip(*parts, strict=False):
        if len(set(segment)) > 1:
            break
        common.append(segment[0])
    return "/".join(common)
