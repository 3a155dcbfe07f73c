"""A shard's archive read member by member: safe members whole, damage in words."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sa1b_cli.core.archive import (
    ArchiveError,
    Member,
    Refusal,
    iter_members,
    member_id,
    open_shard,
)
from tests.shards import good_pair, tar_bytes


def members_of(data: bytes, tmp_path: Path) -> list[Member | Refusal]:
    path = tmp_path / "sa_000000.tar"
    path.write_bytes(data)
    with open_shard(path) as (stream, counter):
        found = list(iter_members(stream))
    assert counter.count == len(data)  # every byte as served was counted
    return found


@pytest.mark.parametrize("gzip", [True, False])
def test_members_come_whole_in_archive_order_without_the_root_entry(tmp_path: Path, gzip: bool):
    pairs = good_pair(1) + good_pair(2)
    found = members_of(tar_bytes(pairs, gzip=gzip), tmp_path)
    assert [(m.name, m.data) for m in found if isinstance(m, Member)] == [
        (name.removeprefix("./"), data) for name, data in pairs
    ]


def link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info


def test_unsafe_members_are_refused_by_name_and_never_read(tmp_path: Path):
    found = members_of(tar_bytes([*good_pair(1), link("./sa_9.jpg"), ("../x", b"y")]), tmp_path)
    refused = {r.name: r.reason for r in found if isinstance(r, Refusal)}
    assert refused == {"./sa_9.jpg": "a link (to '/etc/passwd')", "../x": "a path with '..'"}


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda d: d[: len(d) // 2], "cut short"),
        (lambda d: d + b"trailing garbage", "follow the gzip stream"),
        (lambda d: d[:-8] + bytes(8), "CRC"),
    ],
)
def test_a_damaged_stream_fails_in_words(tmp_path: Path, damage, says):
    data = damage(tar_bytes(good_pair(1) + good_pair(2)))
    with pytest.raises(ArchiveError) as caught:
        members_of(data, tmp_path)
    assert says.lower() in str(caught.value).lower(), caught.value


def test_a_name_twice_and_a_member_past_the_limit_fail_the_shard(tmp_path: Path):
    with pytest.raises(ArchiveError, match="appears twice"):
        members_of(tar_bytes([*good_pair(1), good_pair(1)[0]]), tmp_path)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:  # a header that declares 1 GiB
        info = tarfile.TarInfo("sa_1.jpg")
        info.size = 1 << 30
        tar.addfile(info)  # no data follows: the size alone must stop it
    with pytest.raises(ArchiveError, match=r"declares 1\.0 GiB"):
        members_of(raw.getvalue(), tmp_path)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_real_extended_headers_still_read_within_their_bounds(tmp_path: Path, fmt: int):
    """A long name (GNU) and pax records (a long name, a non-ASCII one, a global header) are
    what real tars carry: the bounds on extended headers leave them alone."""
    long_name = "./" + "d" * 150 + "/sa_7.jpg"
    raw = io.BytesIO()
    pax = {"comment": "made by tar"} if fmt == tarfile.PAX_FORMAT else None
    with tarfile.open(fileobj=raw, mode="w", format=fmt, pax_headers=pax) as tar:
        for name, data in [*good_pair(1), (long_name, b"x"), ("./sa_é.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    names = [m.name for m in members_of(raw.getvalue(), tmp_path)]
    assert names == ["sa_1.jpg", "sa_1.json", long_name[2:], "sa_é.json"]


def test_member_ids():
    assert member_id("sa_123.jpg") == (123, "jpg")
    assert member_id("sa_123.json") == (123, "json")
    assert member_id("sa_x.jpg") is None and member_id("notes.txt") is None
