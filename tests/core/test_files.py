"""Files a user names are read whole up to a bound, and never allocate the bound for nothing."""

from __future__ import annotations

import errno
import os
import threading
import tracemalloc
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
