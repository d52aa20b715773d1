"""ShardSet: a dataset that is shards (Parquet with image bytes, WebDataset tars), described for
the job: which shards, their format, and the keys that say where a row's image, mask and id are.
`Manifest.from_parquet_dataset` / `Manifest.from_webdataset` and `manifest build --parquet-dataset
/ --webdataset` make one; its rows stay in the shards (the job reads them shard by shard).

`write(uri)` pins the list in a shard list file (`*.shards.json`, JSON: format, root, the
shards' names below it), which `run --manifest`, `run --dry-run` and `manifest validate` take
like the pattern or folder it was listed from: a growing dataset's list fixes what a run does.
The column keys are not in it: they are the run's settings (`config()` gives them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from batch_inpaint.errors import ConfigError, InpaintError, ManifestError
from batch_inpaint.manifest.shard_listing import Shard, is_pattern, list_shards
from batch_inpaint.storage.uri import join, redact_uri

LIST_SUFFIX = ".shards.json"
LIST_KIND = "batch-inpaint shard list"
FORMATS = {".tar": "webdataset", ".parquet": "parquet"}
DEFAULT_KEYS = {"image_column": "image", "mask_column": "mask", "id_column": None,
                "mask_member": "mask.png"}  # fmt: skip


@dataclass(frozen=True)
class ShardSet:
    format: str  # "parquet" | "webdataset": also the output_format a run keeps by default
    root: str  # the shards' folder: OUTPUT/data/<name> for each
    shards: tuple[Shard, ...]
    source: str | None  # the pattern, folder, file or list file it came from (None: a list)
    keys: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_KEYS))
    storage: Any = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def uris(self) -> list[str]:
        return [s.uri for s in self.shards]

    def config(self) -> dict[str, Any]:
        """The JobConfig keys that read this set: `JobConfig(output=..., **shards.config())`."""
        if self.source is None:
            raise ConfigError("a shard set from a list of files has no single source: write() it "
                              "to a .shards.json file and give that as the manifest")  # fmt: skip
        changed = {k: v for k, v in self.keys.items() if DEFAULT_KEYS[k] != v}
        return {"manifest": self.source, **changed}

    def write(self, uri: str) -> ShardSet:
        """Pin the list in a shard list file; returns the set whose source is that file."""
        if not uri.endswith(LIST_SUFFIX):
            raise ConfigError(f"{redact_uri(uri)}: a shard list's name ends in {LIST_SUFFIX}")
        body = {"kind": LIST_KIND, "version": 1, "format": self.format, "root": self.root,
                "listed_from": self.source, "shards": [s.name for s in self.shards]}  # fmt: skip
        self.storage.write_bytes(uri, (json.dumps(body, indent=1) + "\n").encode())
        return replace(self, source=uri)

    def __repr__(self) -> str:
        where = redact_uri(self.source) if self.source else f"{len(self)} files"
        return f"ShardSet({self.format}, {where}, {len(self)} shards)"


def shard_set(
    source: str | Sequence[str],
    storage,
    expect: str | None = None,
    *,
    missing_ok: bool = False,
    **keys: Any,
) -> ShardSet:
    """The shards a source names (a pattern, folder, file, list of files or a shard list file),
    all of one format (`expect`, when given); `missing_ok`: a pattern's absent shards are left
    out (a growing dataset), not refused."""
    keys = {**DEFAULT_KEYS, **keys}
    if isinstance(source, str) and source.endswith(LIST_SUFFIX):
        found = read_shard_list(storage, source)
        found = replace(found, keys=keys)
    else:
        shards = list_shards(storage, source, tuple(FORMATS), missing_ok=missing_ok)
        if not shards:
            raise ManifestError(f"{_shown(source)}: no shards there")
        kinds = {FORMATS[_suffix(s.name)] for s in shards}
        if len(kinds) > 1:
            raise ConfigError(f"{_shown(source)}: holds both .tar and .parquet shards; name one "
                              "kind (a pattern such as *.tar)")  # fmt: skip
        first = shards[0]  # its uri is root/name
        root = first.uri[: len(first.uri) - len(first.name)].rstrip("/")
        found = ShardSet(kinds.pop(), root, tuple(shards),
                         source if isinstance(source, str) else None, keys, storage)  # fmt: skip
    if expect is not None and found.format != expect:
        raise ConfigError(f"{_shown(source)}: {found.format} shards, not {expect}")
    return found


def find_shard_set(
    source: str, storage, *, missing_ok: bool = False, **keys: Any
) -> ShardSet | None:
    """The shard set a manifest argument names, or None when it is a manifest of URIs (a
    Parquet file or folder whose image column holds strings, or where no shard is listed). A
    source that can only be shards (a pattern, a .tar, a shard list) says what is wrong."""
    sure = source.endswith((LIST_SUFFIX, ".tar")) or is_pattern(source)
    try:
        found = shard_set(source, storage, missing_ok=missing_ok, **keys)
    except InpaintError:
        if sure:
            raise
        return None
    if found.format == "parquet":
        try:
            uris = holds_uris(found)
        except (OSError, ValueError):  # unreadable (permissions, damage: ArrowInvalid): the
            # manifest's own read says why
            return None
        if uris:
            return None
        check_image_column(found)
    return found


def read_shard_list(storage, uri: str) -> ShardSet:
    """A shard list file (ShardSet.write); the column keys are the defaults (set them again)."""
    try:
        body = json.loads(storage.read_bytes(uri))
        if body.get("kind") != LIST_KIND:
            raise ValueError(f"not a {LIST_KIND}")
        root, names = body["root"], list(body["shards"])
        fmt = body["format"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{redact_uri(uri)}: not a shard list ({exc})") from None
    if fmt not in FORMATS.values():
        raise ManifestError(f"{redact_uri(uri)}: unknown shard format {fmt!r}")
    shards = tuple(Shard(join(root, n), n) for n in names)
    return ShardSet(fmt, root, shards, uri, dict(DEFAULT_KEYS), storage)


def check_image_column(found: ShardSet) -> None:
    """A Parquet set's first shard has the image column, holding bytes (binary, or the `datasets`
    struct {bytes, path}); a manifest of URIs is Manifest.read's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = found.shards[0].uri
    fs, path = found.storage.pyarrow_filesystem(first)
    try:
        schema = pq.read_schema(path, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"{redact_uri(first)}: can't read it as Parquet: {exc}") from None
    name = found.keys["image_column"]
    if name not in schema.names:
        raise ConfigError(f"{redact_uri(first)}: no column {name!r} (its columns: "
                          f"{', '.join(schema.names)}); name the image column")  # fmt: skip
    t = schema.field(name).type
    inner = (
        t.field("bytes").type if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 else t
    )
    if not (pa.types.is_binary(inner) or pa.types.is_large_binary(inner)):
        raise ConfigError(f"{redact_uri(first)}: column {name!r} is {t}, not image bytes (binary "
                          "or {bytes, path}); a manifest of URIs is read with Manifest.read")  # fmt: skip


def holds_uris(found: ShardSet) -> bool:
    """True when a Parquet set's image column holds strings: a manifest of URIs, not shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = found.storage.pyarrow_filesystem(found.shards[0].uri)
    schema = pq.read_schema(path, filesystem=fs)
    name = found.keys["image_column"]
    return name in schema.names and pa.types.is_string(schema.field(name).type)


def _suffix(name: str) -> str:
    return next(s for s in FORMATS if name.lower().endswith(s))


def _shown(source: str | Sequence[str]) -> str:
    return redact_uri(source) if isinstance(source, str) else f"{len(source)} files"
