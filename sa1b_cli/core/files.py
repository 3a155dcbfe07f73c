"""Files a user names (a manifest, a checksum list) or sa1b wrote (records, claims, markers),
read whole but never past a bound: ``--links /dev/zero`` or a wrong multi-GiB file must fail
with its name, not fill memory, and a pipe left among sa1b's own files must not block."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from sa1b_cli.core.text import format_size

__all__ = ["open_own", "read_at_most", "write_all"]

_STEP = 1 << 20  # bytes read at a time from a device or a pipe (their size says nothing)


def read_at_most(path: Path, limit: int, *, own: bool = False) -> bytes:
    """The file's bytes; an ``OSError`` (``EFBIG``, its strerror in words) past ``limit``.

    A regular file is read in one call of its own size (asking ``limit`` bytes at once would
    allocate them all: 16 MiB for every small record), anything else a step at a time.
    ``own``: a file sa1b writes itself (a record, a claim, a marker), so only a regular file
    at that very path; a named pipe left there would block the run forever."""
    chunks: list[bytes] = []
    got = 0
    with _opened(path, own=own) as handle:
        size = os.fstat(handle.fileno()).st_size  # 0 for a device or a pipe
        want = size + 1 if size else _STEP
        while got <= limit:
            asked = min(want, limit + 1 - got)
            chunk = handle.read(asked)
            chunks.append(chunk)
            got += len(chunk)
            if not chunk or (size and len(chunk) < asked):  # a regular file ends short
                break
            want = _STEP
    if got > limit:
        raise OSError(errno.EFBIG, f"larger than {format_size(limit)}, so not this kind of file")
    return b"".join(chunks)


def _opened(path: Path, *, own: bool) -> BinaryIO:
    if own:
        return open_own(path)
    return path.open("rb", buffering=0)  # a user's pipe (`<(zcat links.gz)`) may block


def open_own(path: Path) -> BinaryIO:
    """A file sa1b wrote, unbuffered: only a regular file at ``path`` itself, opened without
    blocking (a named pipe left there would block forever) and never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW's word for "a link", which reads as a loop
            raise OSError(exc.errno, "a symbolic link, so not one sa1b wrote", str(path)) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file, so not one sa1b wrote", str(path))
    return os.fdopen(fd, "rb", buffering=0)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Every byte of ``data``: a write may take fewer than it is given (a disk filling up),
    and a file cut that way must never be renamed into place."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
