"""A part file's disk blocks, allocated ahead of the writes on a thread of its own.

On ext4, a write that allocates its blocks as it goes costs the receiving thread
(a download's critical path) more than the copy itself; into blocks allocated before, it
does not (docs/performance.md). So a helper allocates them a little ahead with
``fallocate(FALLOC_FL_KEEP_SIZE)``, which changes neither the file's size nor its bytes.
Blocks left past the end are freed at close, or by the ``ftruncate`` of the next open
after a crash.

Only there: on XFS a write costs as little either way; on tmpfs ``fallocate`` zeroes each
page while it holds the file's lock, and the writes wait for it; on a network file system
a call may be a round trip. Best effort: after any failed call (EOPNOTSUPP, ENOSPC) it
stops, and the writes allocate, and report ENOSPC, as before.
"""

from __future__ import annotations

import _thread
import ctypes
import functools
import queue
import threading
from collections.abc import Callable

from sa1b_cli.download.plan import SpanSet

__all__ = ["AHEAD", "Allocator", "Fallocate"]

AHEAD = 32 << 20  # bytes allocated past a block that falls outside what was asked before
_CHUNK = 8 << 20  # per call: the file system holds the file's lock meanwhile
_KEEP_SIZE = 0x01  # FALLOC_FL_KEEP_SIZE
_MEASURED = {0xEF53}  # statfs f_type: ext2/3/4

Fallocate = Callable[[int, int, int, int], int]  # (fd, mode, offset, length) -> 0 or -1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library already loaded into the process (no search: ``find_library`` may run
    ``ldconfig`` or a compiler)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@functools.cache
def _libc_fallocate() -> Fallocate | None:
    """``fallocate(2)``: Python has only ``posix_fallocate``, which changes the size and,
    where the file system cannot allocate, writes zeros instead."""
    call = getattr(_libc(), "fallocate", None)  # None off Linux
    if call is None:
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


def _file_system(fd: int) -> int | None:
    """The ``f_type`` of the file system holding ``fd`` (``fstatfs``), None if unknown."""
    call = getattr(_libc(), "fstatfs", None)
    if call is None:
        return None
    buffer = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first word
    if call(fd, buffer) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF


class Allocator:
    """Allocates the blocks of one open file ahead of the writes, on its own thread.

    ``ahead_of`` is called on the loop as each block is lent; ``close`` before the file
    descriptor is closed: no call reaches a descriptor that may be reused by then.
    """

    def __init__(self, fd: int, fallocate: Fallocate) -> None:
        self._fd: int | None = fd
        self._fallocate = fallocate
        self._lock = threading.Lock()
        self._asks: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._started = False
        self._closing = False
        self.asked = SpanSet()  # ranges handed to the thread (allocated, or about to be)
        self.stopped = False  # set by the thread once a call failed

    @classmethod
    def on(cls, fd: int, fallocate: Fallocate | None = None) -> Allocator | None:
        """An allocator for ``fd`` where allocating ahead was measured to pay, else None."""
        fallocate = fallocate or _libc_fallocate()
        if fallocate is None or _file_system(fd) not in _MEASURED:
            return None
        return cls(fd, fallocate)

    def ahead_of(self, start: int, end: int, size: int | None) -> None:
        """``[start, end)`` is about to be written: allocate it, and ``AHEAD`` more up to
        ``size`` once the size is known."""
        if self.stopped or self.asked.covers(start, end):
            return
        stop = end if size is None else max(end, min(size, end + AHEAD))
        self.asked.add(start, stop)
        self._asks.put((start, stop))
        if not self._started:
            self._started = True
            # Not threading.Thread: its start() waits on the loop until the thread runs.
            _thread.start_new_thread(self._run, ())

    def close(self) -> None:
        """No call after this returns; the thread ends."""
        self._closing = True  # the thread makes no further call: this waits for one at most
        with self._lock:
            self._fd = None
        self._asks.put(None)

    def _run(self) -> None:
        try:
            while (ask := self._asks.get()) is not None:
                start, stop = ask
                for offset in range(start, stop, _CHUNK):
                    if not self._allocate(offset, min(_CHUNK, stop - offset)):
                        self.stopped = True
                        return
        except Exception:  # a help, never a failure: the writes allocate for themselves
            self.stopped = True

    def _allocate(self, offset: int, length: int) -> bool:
        """One call; False once the file is closed, or on any error."""
        if self._closing:
            return False
        with self._lock:
            fd = self._fd
            return fd is not None and self._fallocate(fd, _KEEP_SIZE, offset, length) == 0
