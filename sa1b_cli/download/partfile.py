"""The ``.part`` file of one shard: blocks written at their offsets, digests computed in order.

Several connections may write one file at once, each at its own offset. The digests (xxh3
and any --checksums algorithm) cannot be combined from pieces, so they advance along a
frontier: a block that lands exactly at the frontier is hashed from memory in the same
thread call that writes it (the one-connection case: no second read at all); blocks ahead
of it are written only, and are hashed when the frontier reaches them, read back moments
after they were written (from the page cache; the window is a few pieces). One hashing
operation runs at a time, so the digests always see bytes in file order.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from sa1b_cli.core.checksums import ALGORITHMS, Hasher
from sa1b_cli.download.spans import SpanSet

__all__ = ["Block", "PartFile", "is_disk_full"]

_READ_BACK = 1 << 20  # one buffer per part file, only while bytes are read back


def _update_all(hashers: Iterable[Hasher], block: bytes | memoryview) -> None:
    for hasher in hashers:
        hasher.update(block)


def _write_at(
    fd: int, offset: int, chunks: Sequence[bytes | memoryview], hashers: Iterable[Hasher]
) -> None:
    """One pwritev per block (no join copy), then the digests of exactly those bytes."""
    pending = chunks
    while pending:
        written = os.pwritev(fd, pending, offset)
        offset += written
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending = pending[1:]
        if written:  # a short write inside a chunk
            pending = [pending[0][written:], *pending[1:]]
    for chunk in chunks:
        _update_all(hashers, chunk)


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

    def __init__(self, part: PartFile, fd: int, offset: int, hashers: list[Hasher]) -> None:
        self.part, self.fd, self.offset, self.hashers = part, fd, offset, hashers
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wrote = 0

    def write(self, view: memoryview) -> None:
        """Blocking, on the receiving thread: write ``view`` next, hash it if at the frontier."""
        _write_at(self.fd, self.offset + self.wrote, [view], self.hashers)
        self.wrote += len(view)

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

    async def open(self, *, keep: SpanSet) -> PartFile:
        """Open, trusting only ``keep`` (the last durable checkpoint) and hashing its prefix."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        current = os.fstat(self._fd).st_size
        self.written = keep.clipped(current)
        # Bytes past the last fsync'ed checkpoint may be garbage after a power cut.
        end = max((e for _, e in self.written), default=0)
        os.ftruncate(self._fd, end)
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

    def write_at(self, offset: int, chunks: list[bytes]) -> asyncio.Future[None]:
        """Start writing a block at ``offset``; await the result before the writer's next block."""
        assert self._fd is not None
        size = sum(len(c) for c in chunks)
        hashers = self._at_frontier(offset, size)
        future = asyncio.ensure_future(self._write(offset, chunks, size, hashers))
        if hashers:
            self._hashing = future
        self._writes.add(future)
        self.received += size
        return future

    def block(self, offset: int, size: int) -> Block:
        """Reserve ``[offset, offset + size)`` for a write another thread does as bytes arrive.

        The receiving thread calls ``Block.write``; ``Block.landed`` must follow on the
        loop, whether or not anyone still waits for the bytes (the wire calls it either way).
        """
        assert self._fd is not None
        block = Block(self, self._fd, offset, self._at_frontier(offset, size))
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

    async def _write(
        self, offset: int, chunks: list[bytes], size: int, hashers: list[Hasher]
    ) -> None:
        fd = self._fd
        assert fd is not None
        try:
            await asyncio.to_thread(_write_at, fd, offset, chunks, hashers)
        finally:
            # Cleared here, not in a done callback: a waiter must never see a finished
            # future still registered (awaiting a done future does not yield to the loop).
            self._writes.discard(asyncio.current_task())
            if hashers:
                self._hashing = None
        self.written.add(offset, offset + size)
        self.arrived += size
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
        os.ftruncate(self._fd, 0)
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
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    async def __aenter__(self) -> PartFile:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
