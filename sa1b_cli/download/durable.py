"""Durability of one shard: the ``.part`` file and its ledger, one owner of what is on disk.

``PartFile`` writes blocks at their offsets, as several connections deliver them, and
computes the digests (xxh3 and any --checksums algorithm) along a frontier: a block that
lands exactly at the frontier is hashed from memory by the thread that writes it (one
connection: no second read at all); blocks ahead of it are hashed when the frontier
reaches them, read back from the page cache moments later. One hashing operation runs at
a time, so the digests always see bytes in file order.

``ShardFile`` owns the part file and is the only code that touches it: it lends blocks
to the receiving side, and it alone says what is durable. Only bytes proven durable are
trusted: the data is fsync'ed first, then a record naming exactly those byte ranges is
written atomically. A final name only ever holds whole, checked bytes (digests compared,
fsync, rename, then the record says "complete").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from sa1b_cli.core.checksums import ALGORITHMS, Hasher
from sa1b_cli.core.claims import Claim
from sa1b_cli.core.manifest import ManifestRow, object_path
from sa1b_cli.core.store import Record, RecordStatus, Store
from sa1b_cli.core.text import format_size
from sa1b_cli.download.allocate import Allocator
from sa1b_cli.download.plan import Piece, Span, SpanSet

__all__ = [
    "Block",
    "ClaimLost",
    "NoRoom",
    "NotAFile",
    "PartFile",
    "ShardFile",
    "SizeChanged",
    "is_disk_full",
]

_READ_BACK = 1 << 20  # one buffer per part file, only while bytes are read back


def _update_all(hashers: Iterable[Hasher], block: bytes | memoryview) -> None:
    for hasher in hashers:
        hasher.update(block)


def _write_at(fd: int, offset: int, view: memoryview, hashers: Iterable[Hasher]) -> None:
    """Write ``view`` at ``offset`` (short writes resumed), then hash exactly those bytes."""
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    _update_all(hashers, view)


def _hash_range(
    fd: int, start: int, end: int, hashers: Iterable[Hasher], buffer: bytearray
) -> None:
    """Read ``[start, end)`` back (from the page cache, moments after it was written) and hash it.

    Into one reused buffer: mapping the range instead costs a page fault per 4 KiB and a
    TLB shoot-down per unmap, more than the copy it saves.
    """
    view = memoryview(buffer)
    pos = start
    while pos < end:
        n = os.preadv(fd, [view[: min(len(buffer), end - pos)]], pos)
        if n <= 0:
            msg = f"the part file ends at {pos:,} while bytes up to {end:,} were written"
            raise OSError(errno.EIO, msg)
        _update_all(hashers, view[:n])
        pos += n


class Block:
    """One block written straight from the receiving thread (no hop through the event loop)."""

    def __init__(
        self, part: PartFile, fd: int, span: Span, hashers: list[Hasher], piece: Piece | None
    ) -> None:
        self.part, self.fd, self.hashers = part, fd, hashers
        self.offset, self.end = span
        self.piece = piece  # a tail split lowers its end while the thread writes
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wrote = 0

    @property
    def file(self) -> PartFile:
        """The file it writes into (one receiving thread writes a file at a time)."""
        return self.part

    def room(self) -> int:
        """Bytes it still takes, up to the piece's end as it is now (read on the thread).

        A split that comes between a receive and its write lets one buffer past the new
        end: the same bytes the other connection writes there, so no harm but the waste.
        """
        end = self.end if self.piece is None else min(self.end, self.piece.end)
        return end - self.offset - self.wrote

    def write(self, view: memoryview) -> None:
        """Blocking, on the receiving thread: write ``view`` next, hash it if at the frontier."""
        _write_at(self.fd, self.offset + self.wrote, view, self.hashers)
        self.wrote += len(view)
        if self.piece is not None:  # now, not when the call ends: a split starts past it
            self.piece.reached(self.offset + self.wrote)

    def landed(self, error: OSError | None) -> None:
        """On the loop, once the thread is done with the block (whether or not it wrote)."""
        del error  # raised by the receiver; the part file counts what was written
        self.part.landed(self)


class PartFile:
    """Bytes received so far, written at their offsets, with the digests of the prefix."""

    def __init__(self, path: Path, algorithms: Iterable[str]) -> None:
        self.path = path
        self.algorithms = tuple(dict.fromkeys(algorithms))
        self.written = SpanSet()  # bytes whose write has finished
        self.received = 0  # bytes written or being written, for progress and checkpoints
        self.arrived = 0  # bytes this run wrote into the file (a reset keeps counting)
        self.hashed = 0  # bytes [0, hashed) fed, or being fed, to the hashers
        self.hashers: dict[str, Hasher] = {}
        self._fd: int | None = None
        self._writes: set[asyncio.Future[None]] = set()
        self._hashing: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._back_buffer: bytearray | None = None
        self._allocator: Allocator | None = None

    async def open(self, *, keep: SpanSet) -> PartFile:
        """Open, trusting only ``keep`` (the last durable checkpoint) and hashing its prefix."""
        self._fd = _open_regular(self.path)
        current = os.fstat(self._fd).st_size
        self.written = keep.clipped(current)
        # Bytes past the last fsync'ed checkpoint may be garbage after a power cut.
        end = max((e for _, e in self.written), default=0)
        os.ftruncate(self._fd, end)  # also frees blocks an earlier run allocated past the end
        self._allocator = Allocator.on(self._fd)
        self.received = self.written.total()
        self._new_hashers()
        prefix = self.written.prefix()
        if prefix:
            hashers = self.hashers.values()
            await asyncio.to_thread(_hash_range, self._fd, 0, prefix, hashers, self._buffer())
        self.hashed = prefix
        return self

    def _buffer(self) -> bytearray:
        """The read-back buffer: one hashing operation runs at a time, so one is enough."""
        if self._back_buffer is None:
            self._back_buffer = bytearray(_READ_BACK)
        return self._back_buffer

    def _new_hashers(self) -> None:
        self.hashers = {alg: ALGORITHMS[alg]() for alg in self.algorithms}

    def block(
        self, offset: int, size: int, limit: int | None = None, piece: Piece | None = None
    ) -> Block:
        """Reserve ``[offset, offset + size)`` for a write another thread does as bytes arrive.

        The receiving thread calls ``Block.write``, never past ``piece.end`` as a split moves
        it; ``Block.landed`` must follow on the loop, whether or not anyone still waits for
        the bytes (the wire calls it either way). Its disk blocks are allocated ahead on
        another thread, never past ``limit``.
        """
        assert self._fd is not None
        if self._allocator is not None:
            self._allocator.ahead_of(offset, offset + size, limit)
        span = (offset, offset + size)
        block = Block(self, self._fd, span, self._at_frontier(offset, size), piece)
        if block.hashers:
            self._hashing = block.done
        self._writes.add(block.done)
        return block

    def _at_frontier(self, offset: int, size: int) -> list[Hasher]:
        """The hashers, when a block starting at ``offset`` can be hashed from memory."""
        if offset != self.hashed or self._hashing is not None:
            return []
        self.hashed = offset + size
        return list(self.hashers.values())

    def landed(self, block: Block) -> None:
        """On the loop, once a block's thread is done with it: count it, move the frontier.

        After a write error only the bytes before ``wrote`` are in the file, so only they
        count (the error itself is the receiver's to raise: the wire hands it over).
        """
        self._writes.discard(block.done)
        if block.hashers:
            self._hashing = None
            self.hashed = block.offset + block.wrote  # fewer bytes may come than reserved
        if block.wrote:
            self.written.add(block.offset, block.offset + block.wrote)
            self.received += block.wrote
            self.arrived += block.wrote
        block.done.set_result(None)
        self._advance()

    def _advance(self) -> None:
        """Hash the written bytes that now follow the frontier (one read-back at a time)."""
        if self._hashing is not None or self._fd is None or self._error is not None:
            return
        start = self.hashed
        end = self.written.run_end(start)
        if end == start:
            return
        self.hashed = end
        self._hashing = asyncio.ensure_future(self._read_back(self._fd, start, end))

    async def _read_back(self, fd: int, start: int, end: int) -> None:
        try:
            hashers = list(self.hashers.values())
            await asyncio.to_thread(_hash_range, fd, start, end, hashers, self._buffer())
        except Exception as exc:  # raised to whoever asks for the digests
            self._error = exc
            return
        finally:
            self._hashing = None
        self._advance()

    async def drain(self) -> None:
        """Wait for every block in flight; raises the first write error (ENOSPC, EIO...)."""
        while self._writes:
            await asyncio.gather(*list(self._writes))

    async def _settle(self) -> None:
        await self.drain()
        while (hashing := self._hashing) is not None:
            await asyncio.shield(hashing)  # each one clears itself before it finishes
        if self._error is not None:
            raise self._error

    async def sync(self) -> SpanSet:
        """fsync, and return the spans that are now durable.

        Waits for no block in flight: ``written`` only names blocks whose write returned,
        so everything in the copy taken before the fsync is covered by it. (A block is in
        flight from before its bytes arrive: waiting would wait on the network.)
        """
        assert self._fd is not None
        durable = self.written.copy()
        await asyncio.to_thread(os.fsync, self._fd)
        return durable

    async def reset(self) -> None:
        """Drop every byte: the server ignored our Range or the content was wrong."""
        assert self._fd is not None
        await self._settle()
        self._stop_allocating()  # a call still under way would allocate past the cut
        os.ftruncate(self._fd, 0)
        self._allocator = Allocator.on(self._fd)
        self.written = SpanSet()
        self.received = 0
        self.hashed = 0
        self._new_hashers()

    async def digests(self) -> dict[str, str]:
        """The digests of the whole written prefix."""
        await self._settle()
        return {alg: hasher.hexdigest() for alg, hasher in self.hashers.items()}

    async def close(self) -> None:
        try:
            await self._settle()
        finally:
            self._stop_allocating()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _stop_allocating(self) -> None:
        """No allocation from now on; blocks allocated past the end (the run stopped short
        of them) are given back."""
        allocator, self._allocator = self._allocator, None
        if allocator is None or self._fd is None:
            return
        allocator.close()
        with contextlib.suppress(OSError):
            size = os.fstat(self._fd).st_size
            if max((end for _, end in allocator.asked), default=0) > size:
                os.ftruncate(self._fd, size)  # the same size: frees the blocks past it


class ClaimLost(Exception):
    """Another process took over this shard's claim: touch nothing more."""


class SizeChanged(Exception):
    """A reply implies another total than the one known: a shard's size never changes."""

    def __init__(self, known: int, now: int) -> None:
        said = f"now says {format_size(now)}; it said {format_size(known)} before"
        super().__init__(f"the server {said}")
        self.known, self.now = known, now


class NoRoom(Exception):
    """The bytes still to come cannot fit in the disk's free space at all: fail the shard
    before its first byte, not the run once the disk is full (a server may say any size)."""

    def __init__(self, size: int, free: int) -> None:
        said = f"the server says it is {format_size(size)}, and {format_size(free)} is free here"
        super().__init__(f"{said}: free space, or check the link")


class NotAFile(Exception):
    """A shard's own path holds a link, a folder or a device: fail that shard, touch nothing.

    On a shared root, a link planted at a ``.part`` path would have had the shard's bytes
    written through it, outside the root, and the file it names cut to the shard's size.
    """

    hint = "Move it out of the way, then run the same command."

    def __init__(self, path: Path, what: str) -> None:
        said = f"{path.name} is {what}, which sa1b never makes"
        super().__init__(f"{said}: nothing was written to it")


_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _other_than_file(path: Path) -> str | None:
    """What is at ``path`` if it is there and not a regular file, never following a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "a device")


def _open_regular(path: Path) -> int:
    """A descriptor on the regular file at ``path`` (made if absent), never through a link."""
    if (what := _other_than_file(path)) is not None:
        raise NotAFile(path, what)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # swapped in since the lstat
            raise NotAFile(path, "something other than a file") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotAFile(path, "something other than a file")
    return fd


class ShardFile:
    """One shard's part file and its record: what is on disk, and what of it is durable.

    The one owner of both: the receiving side only borrows blocks (``block``) and asks for
    checkpoints; the record is written by the claim holder only.
    """

    def __init__(
        self,
        store: Store,
        row: ManifestRow,
        algorithms: Iterable[str],
        *,
        claim: Claim | None,
        monotonic: Callable[[], float],
        wall_clock: Callable[[], float],
        every_bytes: int,
        every_seconds: float,
    ) -> None:
        self.store, self.row, self.claim = store, row, claim
        self.part = PartFile(store.part_path(row.file_name), algorithms)
        self.monotonic, self.wall_clock = monotonic, wall_clock
        self.every_bytes, self.every_seconds = every_bytes, every_seconds
        self.expected_size: int | None = None
        self.durable = SpanSet()
        self._last = (0, 0.0)  # (bytes received, monotonic time) at the last checkpoint
        self._busy = False

    async def open(self, keep: SpanSet) -> ShardFile:
        """Open the part file trusting only ``keep`` (the last durable checkpoint)."""
        await self.part.open(keep=keep)
        self.durable = self.part.written.copy()
        self._last = (self.part.received, self.monotonic())
        return self

    async def __aenter__(self) -> ShardFile:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.part.close()

    @property
    def written(self) -> SpanSet:
        """Bytes whose write has finished (durable or not yet)."""
        return self.part.written

    @property
    def arrived(self) -> int:
        """Bytes this run wrote into the file."""
        return self.part.arrived

    def block(self, offset: int, size: int, piece: Piece | None = None) -> Block:
        """Lend ``[offset, offset + size)`` to a receiving thread (see ``PartFile.block``)."""
        return self.part.block(offset, size, self.expected_size, piece)

    async def drain(self) -> None:
        await self.part.drain()

    async def digests(self) -> dict[str, str]:
        return await self.part.digests()

    def due(self) -> bool:
        if self._busy:  # one is under way: asking again would only cut blocks short
            return False
        done, when = self._last
        if self.part.received - done >= self.every_bytes:
            return True
        return self.monotonic() - when >= self.every_seconds

    async def checkpoint(self, *, force: bool = False) -> None:
        """fsync, then record the durable ranges; one checkpoint at a time."""
        if self._busy or not (force or self.due()) or self.part.received == self._last[0]:
            return
        self._busy = True
        try:
            received = self.part.received
            self.durable = await self.part.sync()
            self._last = (received, self.monotonic())
            await self.record("partial")
            self.ensure_claim()
        finally:
            self._busy = False

    async def learn_size(self, total: int | None) -> None:
        """Fix the size once known; a different total later raises ``SizeChanged``."""
        if total is None or total == self.expected_size:
            return
        if self.expected_size is not None:
            raise SizeChanged(self.expected_size, total)
        self.check_room(total, self.written.total())
        self.expected_size = total
        await self.record("partial")

    def check_room(self, size: int | None, held: int) -> None:
        """Raise ``NoRoom`` when the ``size - held`` bytes still to come cannot fit."""
        if size is not None and size - held > (free := shutil.disk_usage(self.store.tars).free):
            raise NoRoom(size, free)

    async def record(self, status: RecordStatus, **extra: Any) -> None:
        """Write the record from a worker thread: its fsync must not stall every connection."""
        record = Record(
            self.row.file_name,
            status,
            expected_size=self.expected_size,
            object_path=object_path(self.row.url),
            durable_bytes=self.durable.prefix(),
            spans=self.durable.as_list(),
            **extra,
        )
        await asyncio.to_thread(self.store.write, record.with_(updated=self.wall_clock()))

    async def start_over(self) -> None:
        """Drop every byte kept so far, on disk and in the record."""
        await self.part.reset()
        self.durable = SpanSet()
        self._last = (0, self.monotonic())
        await self.record("partial")

    def ensure_claim(self) -> None:
        if self.claim is not None and not self.claim.heartbeat():
            raise ClaimLost

    async def finalise(
        self, expected: dict[str, str], sources: dict[str, str] | None = None
    ) -> str | None:
        """Check size and digests, then fsync + rename. Returns a problem, or None."""
        size = self.part.written.prefix()
        if self.expected_size is not None and size != self.expected_size:
            return f"size {size:,} differs from the {self.expected_size:,} bytes announced"
        digests = await self.part.digests()
        for alg, want in sorted(expected.items()):
            if digests.get(alg) != want:
                return f"{alg} mismatch: expected {want}, got {digests.get(alg)}"
        self.durable = await self.part.sync()
        self.ensure_claim()
        await asyncio.to_thread(self._move_into_place)
        sources = sources or {}
        checked = [f"{alg}={sources.get(alg, 'list')}" for alg in sorted(expected)]
        await self.record(
            "complete", size=size, digests=digests, checked=checked, checked_at=self.wall_clock()
        )
        return None

    def _move_into_place(self) -> None:
        final = self.store.final_path(self.row.file_name)
        try:  # a link or pipe at the final name is replaced itself, never written through
            os.replace(self.part.path, final)
        except IsADirectoryError as exc:
            raise NotAFile(final, "a directory") from exc
        _fsync_dir(self.store.tars)


def _fsync_dir(path: os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
