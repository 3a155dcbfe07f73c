"""Streaming one accepted response body into the part file, at the offset it was asked for.

Two paths. Over the wire transport (every download without a proxy) the connection's own
thread receives and writes the bytes (``read_through``) and this side only counts,
reports, paces and checkpoints once per call. Over any other transport (httpx's behind a
proxy, MockTransport in the tests) it collects chunks into blocks, which a worker thread
writes (and, at the frontier, hashes) while the next block arrives. Either way progress
goes to the sink every 256 KiB and a stall watchdog drops a silent connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from sa1b_cli.core.events import ProgressSink
from sa1b_cli.core.text import format_size
from sa1b_cli.download.partfile import PartFile
from sa1b_cli.download.pieces import Piece
from sa1b_cli.download.ratelimit import RateLimiter
from sa1b_cli.download.wire import BODY_EXTENSION

__all__ = ["Overrun", "Receiver", "StallWatchdog"]

PROGRESS_EVERY = 256 << 10
_PACED_AT_LEAST = 64 << 10  # bytes a --max-rate read asks for, at the least


class Overrun(Exception):
    """The body goes on past the shard's known size (a size never changes)."""

    def __init__(self, name: str, size: int) -> None:
        super().__init__(f"the server sent more than the {format_size(size)} it said before")
        self.name, self.size = name, size


class Receiver:
    """Writes one body from ``pos`` on; ``stop_at`` ends it early at a byte offset."""

    def __init__(
        self,
        part: PartFile,
        *,
        name: str,
        pos: int,
        sink: ProgressSink,
        block_size: int,
        reserve: int,
        limiter: RateLimiter | None,
        counted: Callable[[int], None],
        checkpoint: Callable[[], Awaitable[None]],
        checkpoint_due: Callable[[], bool],
        piece: Piece | None = None,
        end: int | None = None,
    ) -> None:
        self.part, self.name, self.pos = part, name, pos
        self.sink, self.block_size, self.limiter = sink, block_size, limiter
        # The fast path writes up to this much per call; a split of the piece starts at
        # least a minimum piece past ``piece.pos``, so never inside it (reserve <= min_piece).
        self.reserve = reserve
        self.counted = counted  # every byte, as it arrives (the connection controller)
        self.checkpoint, self.checkpoint_due = checkpoint, checkpoint_due
        self.piece = piece  # when set, never write past piece.end (another connection's now)
        self.end = end  # the shard's size, when known: a byte past it fails the shard
        self.fetched = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._unreported = 0
        self._pending: asyncio.Future[None] | None = None

    async def run(self, response: httpx.Response, stall_timeout: float) -> None:
        """Stream the body; on a drop or stall the bytes received so far are still written."""
        try:
            with StallWatchdog(stall_timeout) as watchdog:
                await self._stream(response, watchdog)
        finally:
            await self.flush()

    async def _stream(self, response: httpx.Response, watchdog: StallWatchdog) -> None:
        body = response.extensions.get(BODY_EXTENSION)
        if body is not None:
            await self._stream_through(body, watchdog)
            return
        limiter = self.limiter
        piece = self.piece
        async for chunk in response.aiter_raw():
            watchdog.fed()
            size = len(chunk)
            if self.end is not None and self.pos + self._buffered + size > self.end:
                raise Overrun(self.name, self.end)  # checked first: a piece may end there too
            if piece is not None and size > (room := piece.end - self.pos - self._buffered):
                if room > 0:
                    self._take(chunk[:room], room)
                return  # the rest of this range belongs to another connection now
            self._take(chunk, size)
            if limiter is not None:
                await limiter.acquire(size)
            if self._buffered >= self.block_size or self.checkpoint_due():
                await self._write_block()
                if self.checkpoint_due():
                    await self.flush()
                    await self.checkpoint()
                watchdog.fed()  # a slow disk is not a stalled connection

    async def _stream_through(self, body: Any, watchdog: StallWatchdog) -> None:
        """The wire transport's path: the connection's thread receives and writes the bytes.

        The loop only hears once per call (up to ``reserve`` bytes, or ~50 ms), after the
        bytes are in the file: no buffers held here, no hop to a writer thread.
        """
        piece = self.piece
        while True:
            want = self.reserve
            if piece is not None:
                want = min(want, piece.end - self.pos)
                if want <= 0:
                    return
                piece.pos = self.pos
            if self.limiter is not None and self.limiter.rate:
                # Booked before it is read, a tenth of a second at a time: a thread that
                # pulls 4 MiB at line rate and then sleeps would pace only on average.
                want = min(want, max(_PACED_AT_LEAST, int(self.limiter.rate / 10)))
                await self.limiter.acquire(want)
            size = await body.read_through(want, self.part.block(self.pos, want))
            if size == 0:
                return
            watchdog.fed()
            self.pos += size
            if piece is not None:
                piece.pos = self.pos
            self._count(size)
            if self.checkpoint_due():
                await self.checkpoint()
                watchdog.fed()  # a slow disk is not a stalled connection

    def _take(self, chunk: bytes, size: int) -> None:
        self._chunks.append(chunk)
        self._buffered += size
        self._count(size)

    def _count(self, size: int) -> None:
        self.fetched += size
        self._unreported += size
        self.counted(size)
        if self._unreported >= PROGRESS_EVERY:  # not per chunk: rich takes a lock
            self._report()

    def _report(self) -> None:
        if self._unreported:
            self.sink.advanced(self.name, self._unreported)
            self._unreported = 0

    async def _write_block(self) -> None:
        if self._pending is not None:  # one block in flight per connection
            pending, self._pending = self._pending, None
            await pending
        if self._chunks:
            block, self._chunks = self._chunks, []  # written with one pwritev, never joined
            self._pending = self.part.write_at(self.pos, block)
            self.pos += self._buffered
            self._buffered = 0
            if self.piece is not None:
                self.piece.pos = self.pos  # where a split of this piece may start from

    async def flush(self) -> None:
        """Write what is buffered and wait until it is written (errors surface here)."""
        self._report()
        await self._write_block()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending


class StallWatchdog:
    """Cancels the current task when nothing arrived for ``limit`` seconds.

    One timer per period, re-armed from the time of the last byte, instead of an
    ``asyncio.timeout`` per chunk (tens of thousands of timers a GiB).
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.fired = False

    def fed(self) -> None:
        self.last = self.loop.time()

    def _check(self) -> None:
        if self.loop.time() - self.last >= self.limit:
            self.fired = True
            self.task.cancel()
        else:
            self.handle = self.loop.call_at(self.last + self.limit, self._check)

    def __enter__(self) -> StallWatchdog:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self._cancelling = task.cancelling()
        self.handle = self.loop.call_at(self.last + self.limit, self._check)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.handle.cancel()
        if (
            self.fired
            and kind is asyncio.CancelledError
            and self.task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc
