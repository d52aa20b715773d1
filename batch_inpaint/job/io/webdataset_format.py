"""WebDatasetShards: tar shards as webdataset and img2dataset write them (ShardFormat, see
io/shard_formats.py).

Members are grouped into samples the way webdataset's own reader does (tariterators.py): only
regular files count; top-level `__x__` names and names matching `__...__/` are metadata and
skipped; a member's key is its name up to the first dot of its basename (directories kept) and
its suffix the rest, lowercased; consecutive members with one key form a sample, and a key that
comes back after another key starts a new sample (webdataset yields both). A sample's second
member with the same suffix makes webdataset fail, so it fails here too, naming the shard.

Ids: a sample's id is its key; a key seen again later in the shard gets `<key>#2`, `<key>#3`...
(`#` appended until unused), so every sample stays its own row.

Members are found by io/tar_index.py (common headers read directly, anything else by tarfile).
write() splices the input: members it does not change keep their header and data bytes exactly
(so do skipped members and anything between them); a replaced image gets a new header made from
its old one (mode, owner, mtime kept; size new) and, when the new encoding's extension differs
from the member's (PNG bytes for `k.jpg`), the name `<key>.<new ext>`, so names tell the truth.
Where the sample already has a member by that name, the old name stays (the tar must stay
readable; image readers sniff the bytes)."""

from __future__ import annotations

import copy
import io
import re
import tarfile
from dataclasses import dataclass, field

import pyarrow as pa

from batch_inpaint.errors import ManifestError
from batch_inpaint.job.io import tar_index
from batch_inpaint.job.io.shard_formats import ROW_COLUMNS, ShardColumns
from batch_inpaint.job.io.tar_index import Member

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
_SAME = {"jpeg": "jpg"}  # one encoding, two spellings: no rename between them
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's default skip_meta
_BLOCK = tarfile.BLOCKSIZE


@dataclass
class _Sample:
    key: str
    members: dict[str, int] = field(default_factory=dict)  # suffix -> member position


def split_name(name: str) -> tuple[str | None, str | None]:
    """(key, suffix) as webdataset reads a member name; (None, None) when it has no suffix."""
    match = _KEY.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def _is_meta(name: str) -> bool:
    top_meta = "/" not in name and name.startswith("__") and name.endswith("__")
    return top_meta or _META.match(name) is not None


class _Shard:
    """One tar shard parsed: every member in order with its byte span, and the samples."""

    def __init__(self, data: bytes, shard: str):
        self.data, self.shard = data, shard
        if data[:2] == b"\x1f\x8b" or data[:4] == b"\x28\xb5\x2f\xfd" or data[:3] == b"BZh":
            raise ManifestError(
                f"{shard}: a compressed tar file; WebDataset shards are read as plain .tar "
                "(decompress it)"
            )
        try:
            self.members = tar_index.members(data)
        except (tarfile.TarError, EOFError, OSError) as exc:
            what = "truncated tar" if "unexpected end" in str(exc) else "not a readable tar"
            raise ManifestError(f"{shard}: {what} file ({exc})") from None
        self._check_end()
        self.samples: list[_Sample] = []
        for pos, member in enumerate(self.members):
            self._add(pos, member)

    def _check_end(self) -> None:
        # tarfile stops quietly at a bad or cut header after the first one: a shard cut short
        # (a writer killed mid-way) has no zero block where its members end.
        end = self.members[-1].end if self.members else 0
        if end > len(self.data):
            raise ManifestError(f"{self.shard}: truncated tar (its last member is cut short)")
        if self.data[end : end + _BLOCK] != bytes(_BLOCK):
            what = "truncated" if end + _BLOCK > len(self.data) else "damaged"
            raise ManifestError(
                f"{self.shard}: {what} tar (no end-of-archive block after byte {end}; "
                f"{len(self.members)} members read)"
            )

    def _add(self, pos: int, member: Member) -> None:
        name = member.name
        if not member.regular or _is_meta(name):
            return
        key, suffix = split_name(name)
        if key is None:
            return
        suffix = suffix.lower()
        if not self.samples or self.samples[-1].key != key:
            self.samples.append(_Sample(key))
        sample = self.samples[-1]
        if suffix in sample.members:
            raise ManifestError(
                f"{self.shard}: member {name!r} repeats suffix {suffix!r} of sample {key!r} "
                "(webdataset refuses such a tar: duplicate file name)"
            )
        sample.members[suffix] = pos

    def content(self, pos: int) -> bytes:
        member = self.members[pos]
        end = member.offset_data + member.size
        if end > len(self.data):
            raise ManifestError(f"{self.shard}: truncated tar ({member.name!r} is cut short)")
        return self.data[member.offset_data : end]

    def image_member(self, sample: _Sample, columns: ShardColumns) -> int | None:
        mask = columns.mask_member.lower()
        for suffix, pos in sample.members.items():
            if suffix in IMAGE_SUFFIXES and suffix != mask:
                return pos
        return None

    def ids(self) -> list[str]:
        seen: dict[str, int] = {}
        for sample in self.samples:
            seen[sample.key] = 0
        out = []
        for sample in self.samples:
            seen[sample.key] += 1
            if seen[sample.key] == 1:
                out.append(sample.key)
                continue
            rid = f"{sample.key}#{seen[sample.key]}"
            while rid in seen:  # a real key spelled like that
                rid += "#"
            seen[rid] = 1
            out.append(rid)
        return out


class WebDatasetShards:
    """Tar shards: a row per webdataset sample (see the module's docstring)."""

    name = "webdataset"
    suffix = ".tar"

    def read(self, data: bytes, shard: str, columns: ShardColumns) -> pa.Table:
        parsed = _Shard(data, shard)
        images, paths, masks = [], [], []
        for sample in parsed.samples:
            pos = parsed.image_member(sample, columns)
            images.append(None if pos is None else parsed.content(pos))
            paths.append(None if pos is None else parsed.members[pos].name)
            mask = sample.members.get(columns.mask_member.lower())
            masks.append(None if mask is None else parsed.content(mask))
        values = [parsed.ids(), images, paths, masks, list(range(len(parsed.samples)))]
        return pa.Table.from_arrays(
            [pa.array(v, f.type) for v, f in zip(values, ROW_COLUMNS, strict=True)],
            schema=ROW_COLUMNS,
        )

    def write(
        self, data: bytes, images: dict[int, tuple[bytes, str]], columns: ShardColumns
    ) -> bytes:
        if not images:
            return data
        parsed = _Shard(data, "the input shard")
        changed: dict[int, tuple[bytes, str]] = {}
        for index, (new, ext) in images.items():
            if not 0 <= index < len(parsed.samples):
                raise ValueError(f"no sample {index} in a shard of {len(parsed.samples)}")
            sample = parsed.samples[index]
            pos = parsed.image_member(sample, columns)
            if pos is None:
                raise ValueError(f"sample {index} ({sample.key!r}) has no image member")
            changed[pos] = (new, _new_name(parsed.members[pos].name, sample, ext))
        out = io.BytesIO()
        cursor = 0
        for pos, member in enumerate(parsed.members):
            start, end = member.offset, member.end
            out.write(data[cursor:start])  # e.g. a pax global header
            if pos in changed:
                magic = data[member.offset_data - _BLOCK + 257 : member.offset_data - _BLOCK + 265]
                info = member.tarinfo(data)
                out.write(_header_and_data(info, *changed[pos], gnu=magic == tarfile.GNU_MAGIC))
            else:
                out.write(data[start:end])
            cursor = end
        tail = data[cursor:]
        if tail.strip(b"\0"):
            out.write(tail)  # bytes after the end marker: kept as they were
        else:  # the end marker, padded to a whole record as tarfile writes it
            out.write(bytes(2 * _BLOCK))
            out.write(bytes(-out.tell() % tarfile.RECORDSIZE))
        return out.getvalue()


def _new_name(name: str, sample: _Sample, ext: str) -> str:
    key, suffix = split_name(name)
    old, new = suffix.lower(), ext.lower().lstrip(".")
    if _SAME.get(old, old) == _SAME.get(new, new) or new in sample.members:
        return name
    return f"{key}.{new}"


def _header_and_data(member: tarfile.TarInfo, data: bytes, name: str, gnu: bool) -> bytes:
    info = copy.copy(member)
    info.pax_headers = {
        k: v for k, v in member.pax_headers.items() if k not in ("path", "size")
    }  # recomputed from name and size when they need it
    info.name, info.size = name, len(data)
    fmt = tarfile.GNU_FORMAT if gnu and not member.pax_headers else tarfile.PAX_FORMAT
    header = info.tobuf(fmt, tarfile.ENCODING, "surrogateescape")
    return header + data + bytes(-len(data) % _BLOCK)
