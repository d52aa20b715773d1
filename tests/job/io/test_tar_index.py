"""tar_index (job/io/tar_index.py): its own reading of common tar headers finds exactly the
members tarfile finds (names, offsets, sizes), and hands everything else to tarfile."""

from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds

from batch_inpaint.job.io.tar_index import members, scan


def by_tarfile(data: bytes) -> list[tuple]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.offset, m.offset_data, m.size, m.isreg()) for m in tar.getmembers()]


def facts(found) -> list[tuple]:
    return [(m.name, m.offset, m.offset_data, m.size, m.regular) for m in found]


def tar_of(entries, fmt=tarfile.PAX_FORMAT, pax_headers=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mtime = kind, 1_700_000_000.25
            if kind == tarfile.SYMTYPE:
                info.linkname = "target"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def webdataset_tar() -> bytes:
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False) as writer:
        for i in range(20):
            writer.write({"__key__": f"{i:05d}", "jpg": b"j" * (i * 100), "json": b"{}"})
    return buf.getvalue()


REG, DIR, SYM = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE
COMMON = {
    "webdataset's writer (pax mtime on every member)": webdataset_tar(),
    "ustar, a long name in the prefix field": tar_of(
        [("d" * 120 + "/k.jpg", REG, b"x" * 513), ("d", DIR, None), ("l", SYM, None)],
        tarfile.USTAR_FORMAT,
    ),
    "pax, a non-ASCII path and a 200-character name": tar_of(
        [("café/ü.png", REG, b"p"), ("n" * 200 + ".txt", REG, b"")]
    ),
    "gnu magic, short names": tar_of(
        [("a.jpg", REG, b"1" * 1000), ("dir", DIR, None)], tarfile.GNU_FORMAT
    ),  # fmt: skip
    "empty": tar_of([]),
}
UNCOMMON = {
    "gnu long names": tar_of([("k" * 150 + ".jpg", REG, b"x")], tarfile.GNU_FORMAT),
    "a pax global header": tar_of([("a.jpg", REG, b"x")], pax_headers={"comment": "hi"}),
}


@pytest.mark.parametrize("name", list(COMMON))
def test_common_headers_are_read_as_tarfile_reads_them(name):
    data = COMMON[name]
    found = scan(data)
    assert found is not None
    assert facts(found) == by_tarfile(data)


@pytest.mark.parametrize("name", list(UNCOMMON))
def test_other_headers_go_to_tarfile(name):
    data = UNCOMMON[name]
    assert scan(data) is None
    assert facts(members(data)) == by_tarfile(data)


def test_damage_goes_to_tarfile_which_says_what_is_wrong():
    data = webdataset_tar()
    assert scan(data[: scan(data)[5].offset]) is None  # cut between members: no end block
    bad = bytearray(data)
    bad[1030] ^= 0xFF  # in the first member's own header (after its pax header): checksum fails
    assert scan(bytes(bad)) is None
    assert scan(b"") is None
    with pytest.raises(tarfile.ReadError):
        members(b"")


def test_a_member_header_made_again_from_the_index_is_byte_for_byte_the_same():
    data = webdataset_tar()
    for member in scan(data)[:4]:
        info = member.tarinfo(data)
        made = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        assert made == data[member.offset : member.offset_data]
