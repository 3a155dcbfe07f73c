"""Disk blocks allocated ahead of the writes: within the size, never after close, given back."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import pytest

from sa1b_cli.download.allocate import AHEAD, Allocator, _libc_fallocate
from sa1b_cli.download.durable import PartFile
from sa1b_cli.download.plan import SpanSet
from tests.site import wait_for

MIB = 1 << 20


class Recorder:
    """A stand-in for fallocate(2): records each call, answers ``result``."""

    def __init__(self, result: int = 0) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        self.result = result

    def __call__(self, fd: int, mode: int, offset: int, length: int) -> int:
        self.calls.append((fd, mode, offset, length))
        return self.result


def test_blocks_are_asked_ahead_of_the_writes_and_never_past_the_size() -> None:
    fallocate = Recorder()
    allocator = Allocator(7, fallocate)
    allocator.ahead_of(0, 4 * MIB, size=10 * MIB)
    allocator.ahead_of(4 * MIB, 8 * MIB, size=10 * MIB)  # asked already: no second call
    wait_for(
        lambda: sum(call[3] for call in fallocate.calls) == 10 * MIB, timeout=5, what="the calls"
    )
    allocator.close()
    assert {call[:2] for call in fallocate.calls} == {(7, 1)}  # KEEP_SIZE: the size stays
    covered = SpanSet()
    for _, _, offset, length in fallocate.calls:
        covered.add(offset, offset + length)
    assert list(covered) == [(0, 10 * MIB)]


def test_with_the_size_unknown_only_the_block_itself_is_allocated() -> None:
    fallocate = Recorder()
    allocator = Allocator(7, fallocate)
    allocator.ahead_of(3 * MIB, 4 * MIB, size=None)
    wait_for(lambda: bool(fallocate.calls), timeout=5, what="a call")
    allocator.close()
    assert [call[2:] for call in fallocate.calls] == [(3 * MIB, MIB)]
    assert AHEAD > MIB


def test_a_refusal_stops_the_allocation_for_good() -> None:
    fallocate = Recorder(result=-1)  # EOPNOTSUPP, ENOSPC...
    allocator = Allocator(7, fallocate)
    allocator.ahead_of(0, 64 * MIB, size=None)
    wait_for(lambda: allocator.stopped, timeout=5, what="the refusal")
    allocator.ahead_of(64 * MIB, 65 * MIB, size=None)
    allocator.close()
    time.sleep(0.05)
    assert len(fallocate.calls) == 1


def test_no_call_reaches_the_descriptor_once_close_has_returned() -> None:
    closed = threading.Event()
    late: list[int] = []

    def slow(fd: int, mode: int, offset: int, length: int) -> int:
        if closed.is_set():
            late.append(offset)  # a call after close returned: the fd may be another file's
        time.sleep(0.01)
        return 0

    allocator = Allocator(7, slow)
    allocator.ahead_of(0, 80 * MIB, size=80 * MIB)  # ten calls' worth
    time.sleep(0.03)
    allocator.close()
    closed.set()
    time.sleep(0.15)
    assert late == []
    assert allocator.stopped  # it ended short of the ten


def _measured_file_system(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        return Allocator.on(fd) is not None
    finally:
        os.close(fd)
        path.unlink()


async def test_a_part_file_gets_its_blocks_ahead_and_gives_back_those_past_the_end(tmp_path):
    if not _measured_file_system(tmp_path / "probe"):
        pytest.skip("allocation ahead is only used on ext4")
    path = tmp_path / "x.part"
    data = random.Random(5).randbytes(MIB)
    part = await PartFile(path, ["xxh128"]).open(keep=SpanSet())
    try:
        block = part.block(0, MIB, 64 * MIB)
        await asyncio.to_thread(block.write, memoryview(data))
        block.landed(None)
        wait_for(lambda: path.stat().st_blocks * 512 >= MIB + AHEAD, timeout=5, what="blocks")
        assert path.stat().st_size == MIB  # allocated, not written: the size says only bytes
    finally:
        await part.close()  # a run that stops here: the blocks past the end are given back
    assert path.stat().st_blocks * 512 < 2 * MIB
    assert path.read_bytes() == data


def test_tmpfs_is_left_to_allocate_as_it_writes() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no /dev/shm here")
    probe = shm / f"sa1b-test-{os.getpid()}.part"
    assert not _measured_file_system(probe)  # zeroing under the file's lock: writes wait


async def test_no_block_is_allocated_after_a_reset_cut_the_file(tmp_path, monkeypatch):
    """A call under way when the file is cut is the last: nothing lies past its new end."""
    real = _libc_fallocate()
    if real is None:
        pytest.skip("no fallocate(2) here")
    release, made = threading.Event(), Recorder()

    def held(fd: int, mode: int, offset: int, length: int) -> int:
        release.wait(5)  # the first call is still under way when reset comes
        made(fd, mode, offset, length)
        return real(fd, mode, offset, length)

    monkeypatch.setattr(Allocator, "on", classmethod(lambda cls, fd: cls(fd, held)))
    path = tmp_path / "x.part"
    part = await PartFile(path, ["xxh128"]).open(keep=SpanSet())
    try:
        part.block(0, MIB, 64 * MIB).landed(None)  # asks for 33 MiB: five calls
        threading.Timer(0.2, release.set).start()
        await part.reset()
        calls = len(made.calls)
        await asyncio.sleep(0.3)  # time enough for the four calls left, were they to come
        assert len(made.calls) == calls <= 1
        assert path.stat().st_blocks == 0
    finally:
        release.set()
        await part.close()
