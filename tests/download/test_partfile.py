"""Blocks written from receiving threads: in any order, partly filled, the digest is in order."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from sa1b_cli.download.durable import NotAFile, PartFile
from sa1b_cli.download.plan import SpanSet


async def test_blocks_landing_out_of_order_and_short_still_hash_in_file_order(tmp_path):
    data = random.Random(3).randbytes(3 << 20)
    part = await PartFile(tmp_path / "x.part", ["xxh128"]).open(keep=SpanSet())
    try:
        mib = 1 << 20
        ahead = part.block(mib, 2 * mib)  # a connection further on: written, read back later
        first = part.block(0, mib)  # at the frontier: hashed from memory as it is written
        assert first.hashers and not ahead.hashers

        def write(block, start, end):  # type: ignore[no-untyped-def]
            for i in range(start, end, 256 << 10):  # buffer after buffer, as the wire does
                block.write(memoryview(data)[i : min(end, i + (256 << 10))])

        await asyncio.to_thread(write, ahead, mib, 3 * mib)
        ahead.landed(None)
        await asyncio.to_thread(write, first, 0, mib // 2)  # only half came before a drop
        first.landed(None)
        assert part.hashed == mib // 2 or part.written.prefix() == mib // 2
        retry = part.block(mib // 2, mib // 2)
        await asyncio.to_thread(write, retry, mib // 2, mib)
        retry.landed(None)
        digests = await part.digests()
    finally:
        await part.close()
    assert (tmp_path / "x.part").read_bytes() == data
    assert digests["xxh128"] == xxhash.xxh3_128_hexdigest(data)


async def test_a_block_whose_write_failed_counts_only_what_was_written(tmp_path):
    part = await PartFile(tmp_path / "y.part", ["xxh128"]).open(keep=SpanSet())
    block = part.block(0, 10)
    await asyncio.to_thread(block.write, memoryview(b"abcd"))
    block.landed(OSError(28, "No space left on device"))  # the next buffer failed
    await part.drain()  # the receiver raised the error; nothing is left in flight
    assert list(part.written) == [(0, 4)]
    assert part.hashed == 4  # the frontier is free again, after exactly those bytes
    await part.close()


def _link_outside(path: Path, outside: Path) -> None:
    path.symlink_to(outside)


def _dangling_link(path: Path, outside: Path) -> None:
    path.symlink_to(outside.with_name("not-there-yet"))


def _fifo(path: Path, outside: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path, outside: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


PLANTED = [
    ("a link to a file outside", _link_outside, "a symbolic link"),
    ("a link to nothing yet", _dangling_link, "a symbolic link"),
    ("a link to /dev/zero", lambda p, o: p.symlink_to("/dev/zero"), "a symbolic link"),
    ("a directory", lambda p, o: p.mkdir(), "a directory"),
    ("a named pipe", _fifo, "a named pipe"),
    ("a socket", _socket, "a socket"),
]


@pytest.mark.parametrize(("plant", "what"), [r[1:] for r in PLANTED], ids=[r[0] for r in PLANTED])
async def test_a_part_path_that_is_not_a_file_is_refused_and_nothing_written(
    tmp_path: Path, plant: Callable[[Path, Path], None], what: str
) -> None:
    outside = tmp_path / "elsewhere" / "precious.txt"
    outside.parent.mkdir()
    outside.write_bytes(b"precious")
    path = tmp_path / "sa_000000.tar.part"
    plant(path, outside)
    with pytest.raises(NotAFile, match=f"sa_000000.tar.part is {what}, which sa1b never makes"):
        await PartFile(path, ["xxh128"]).open(keep=SpanSet([(0, 4)]))
    assert outside.read_bytes() == b"precious"
    assert sorted(p.name for p in outside.parent.iterdir()) == ["precious.txt"]
