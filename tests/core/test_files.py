"""Files a user names are read whole up to a bound, and never allocate the bound for nothing."""

from __future__ import annotations

import errno
import os
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from sa1b_cli.core.files import read_at_most


@pytest.mark.parametrize("size", [0, 1, 999, 1000])
def test_a_file_up_to_the_limit_is_read_whole(tmp_path: Path, size: int):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size))
    assert read_at_most(path, 1000) == path.read_bytes()


def test_a_file_past_the_limit_is_refused_in_words(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(bytes(1001))
    with pytest.raises(OSError, match=r"larger than 1,000 B, so not this kind of file") as raised:
        read_at_most(path, 1000)
    assert raised.value.errno == errno.EFBIG


def test_an_endless_device_stops_at_the_limit():
    with pytest.raises(OSError, match=r"larger than 3\.0 MiB"):
        read_at_most(Path("/dev/zero"), 3 << 20)


def test_a_pipe_is_read_to_its_end_through_short_reads(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with fifo.open("wb", buffering=0) as handle:
            for _ in range(5):
                handle.write(b"x" * 70_000)  # more than a pipe holds at once

    thread = threading.Thread(target=writer)
    thread.start()
    assert read_at_most(fifo, 1 << 20) == b"x" * 350_000
    thread.join()


def test_a_small_file_does_not_allocate_the_limit(tmp_path: Path):
    """A 16 MiB bound read at once allocated 16 MiB for each 200-byte record."""
    path = tmp_path / "f"
    path.write_bytes(bytes(200))
    tracemalloc.start()
    try:
        read_at_most(path, 16 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10, peak


def _fifo(path: Path) -> None:
    os.mkfifo(path)


OTHERS = [
    ("a named pipe nobody writes", _fifo),
    ("a link to a record", lambda p: p.symlink_to(p.with_name("real.json"))),
    ("a link to /dev/zero", lambda p: p.symlink_to("/dev/zero")),
    ("a directory", lambda p: p.mkdir()),
]


@pytest.mark.parametrize("plant", [o[1] for o in OTHERS], ids=[o[0] for o in OTHERS])
def test_sa1b_s_own_file_is_read_only_as_a_regular_file_and_never_blocks(
    tmp_path: Path, plant: Callable[[Path], None]
) -> None:
    """A record, claim or marker is always a regular file sa1b wrote: a pipe there blocked."""
    (tmp_path / "real.json").write_text("{}")
    path = tmp_path / "sa_000000.tar.json"
    plant(path)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_at_most(path, 1 << 20, own=True)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # release it, then fail
        with path.open("wb"):
            pass
        pytest.fail("reading blocked")
    assert len(outcome) == 1
    assert read_at_most(tmp_path / "real.json", 1 << 20, own=True) == b"{}"
