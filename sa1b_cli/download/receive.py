"""One body path: an accepted response's bytes into the shard file, at the offset asked for.

Every body is read the same way, ``read_through(size, block)``: whoever receives the
bytes writes them into a block lent by the shard file, and this side hears once per call
(to count, report, pace and checkpoint). The wire transport's sized bodies do that on the
connection's thread with no hop through the loop; any other body (chunked, httpx's own
transport behind a proxy, MockTransport in the tests) is read through ``StreamedBody``,
which writes each collected block from a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import httpx

from sa1b_cli.core.events import ProgressSink
from sa1b_cli.core.text import format_size
from sa1b_cli.download.conn import BlockSink
from sa1b_cli.download.durable import ShardFile
from sa1b_cli.download.plan import Piece
from sa1b_cli.download.ratelimit import RateLimiter
from sa1b_cli.download.wire import BODY_EXTENSION

__all__ = [
    "Body",
    "Endless",
    "Overrun",
    "Receiver",
    "StallWatchdog",
    "StreamedBody",
    "Trickle",
    "body_of",
]

PROGRESS_EVERY = 256 << 10
_PACED_AT_LEAST = 64 << 10  # bytes a --max-rate read asks for, at the least
BUDGET = 0.05  # seconds a streamed read collects before it writes and reports


class Overrun(Exception):
    """The body goes on past the shard's known size (a size never changes)."""

    def __init__(self, name: str, size: int) -> None:
        super().__init__(f"the server sent more than the {format_size(size)} it said before")
        self.name, self.size = name, size


class Endless(Exception):
    """A body of no stated size goes on past any SA-1B shard's (it would fill the disk)."""

    def __init__(self, name: str, ceiling: int) -> None:
        super().__init__(
            f"the server sent more than {format_size(ceiling)} without saying a size "
            "(no SA-1B file comes near that)"
        )
        self.name, self.ceiling = name, ceiling


class Body(Protocol):
    """A response body as the receiver reads it (``wire._Body``, or ``StreamedBody``)."""

    async def read_through(self, size: int, sink: BlockSink) -> int:
        """Up to ``size`` bytes, written by ``sink``; then ``sink.landed``, even if cancelled."""

    async def finished(self) -> bool:
        """Whether no byte is left (a byte past a known size fails the shard)."""


def body_of(response: httpx.Response, block_size: int) -> Body:
    body: Body | None = response.extensions.get(BODY_EXTENSION)
    return body if body is not None else StreamedBody(response, block_size)


class StreamedBody:
    """``read_through`` over the chunks httpx yields: collected, then written on a thread."""

    def __init__(self, response: httpx.Response, block_size: int) -> None:
        self._chunks: AsyncIterator[bytes] = response.aiter_raw()
        self._rest = b""
        self._block_size = block_size

    async def _next(self) -> bytes:
        if self._rest:
            data, self._rest = self._rest, b""
            return data
        return await anext(self._chunks, b"")

    async def _collect(self, size: int, parts: list[bytes], sink: BlockSink) -> None:
        """Chunks into ``parts`` until ``size`` bytes (or the sink's room), the end, or
        ``BUDGET`` seconds."""
        got, loop = 0, asyncio.get_running_loop()
        start = loop.time()
        while got < (size := min(size, sink.room())) and (chunk := await self._next()):
            if got + len(chunk) > size:
                chunk, self._rest = chunk[: size - got], chunk[size - got :]
            parts.append(chunk)
            got += len(chunk)
            if loop.time() - start >= BUDGET:  # a trickle still reports (the stall watchdog)
                break

    async def read_through(self, size: int, sink: BlockSink) -> int:
        parts: list[bytes] = []
        try:
            await self._collect(min(size, self._block_size), parts, sink)
        except BaseException:  # a drop or a stop: what came before it is kept all the same
            await _write_landed(sink, b"".join(parts))
            raise
        return await _write_landed(sink, b"".join(parts))

    async def finished(self) -> bool:
        self._rest = await self._next()
        return not self._rest


async def _write_landed(sink: BlockSink, data: bytes) -> int:
    """``data`` written by ``sink`` on a worker thread; it lands even if the caller is cancelled."""
    if not data:
        sink.landed(None)
        return 0
    future = asyncio.get_running_loop().run_in_executor(None, _write, sink, data)
    future.add_done_callback(functools.partial(_landed, sink))
    error = await asyncio.shield(future)
    if error is not None:
        raise error
    return len(data)


def _landed(sink: BlockSink, done: asyncio.Future[OSError | None]) -> None:
    sink.landed(None if done.exception() else done.result())


def _write(sink: BlockSink, data: bytes) -> OSError | None:
    try:
        sink.write(memoryview(data))
    except OSError as exc:  # the disk's error: raised by the reader, after the block landed
        return exc
    return None


class Receiver:
    """Writes one body from ``pos`` on, never past ``piece.end`` (when given) or the size."""

    def __init__(
        self,
        file: ShardFile,
        *,
        pos: int,
        sink: ProgressSink,
        reserve: int,
        limiter: RateLimiter | None,
        counted: Callable[[int], None],
        piece: Piece | None = None,
        ceiling: int = 1 << 62,
    ) -> None:
        self.file, self.name, self.pos = file, file.row.file_name, pos
        self.sink, self.limiter = sink, limiter
        # Up to this much is written per call; a split of the piece moves its end down
        # mid-call, and the receiving thread stops there (``Block.room``).
        self.reserve = reserve
        self.counted = counted  # every byte, as it arrives (the connection controller)
        self.piece = piece  # when set, never write past piece.end (another connection's now)
        self.ceiling = ceiling  # bytes a body of no known size may bring, at most
        self._unreported = 0

    async def run(self, body: Body, stall_timeout: float, min_rate: float = 0.0) -> None:
        """Read the body to its end (or the piece's); the bytes written so far always count.

        Raises ``TimeoutError`` after ``stall_timeout`` seconds of silence, ``Trickle`` when
        fewer than ``min_rate`` bytes a second came over that long."""
        try:
            with StallWatchdog(stall_timeout, min_rate) as watchdog:
                while (want := await self._want(body, watchdog)) > 0:
                    block = self.file.block(self.pos, want, self.piece)
                    size = await body.read_through(want, block)
                    if size == 0:
                        return
                    watchdog.fed(size)
                    self._advance(size)
                    if self.file.due():
                        watchdog.pause()  # a slow disk is not a stalled connection
                        await self.file.checkpoint()
                        watchdog.resume()
        finally:
            self._report()

    async def _want(self, body: Body, watchdog: StallWatchdog) -> int:
        """Bytes to ask for next; 0 at the end of the piece or of the file."""
        size = self.file.expected_size
        end = self.piece.end if self.piece is not None else size
        want = min(self.reserve, (self.ceiling if end is None else end) - self.pos)
        if want <= 0:
            if end == size is not None and not await body.finished():
                raise Overrun(self.name, size)  # a byte past the size, even if a piece ends there
            if end is None and not await body.finished():
                raise Endless(self.name, self.ceiling)
            return 0
        if self.limiter is not None and self.limiter.rate:
            # Booked before it is read, a tenth of a second at a time: a thread that
            # pulls 4 MiB at line rate and then sleeps would pace only on average.
            want = min(want, max(_PACED_AT_LEAST, int(self.limiter.rate / 10)))
            watchdog.pause()  # our own pacing is not the server's slowness
            await self.limiter.acquire(want)
            watchdog.resume()
        return want

    def _advance(self, size: int) -> None:
        self.pos += size
        if self.piece is not None:
            self.piece.reached(self.pos)
        self.counted(size)
        self._unreported += size
        if self._unreported >= PROGRESS_EVERY:  # not per call: rich takes a lock
            self._report()

    def _report(self) -> None:
        if self._unreported:
            self.sink.advanced(self.name, self._unreported)
            self._unreported = 0


class Trickle(TimeoutError):
    """Bytes kept coming, but fewer than the floor over a whole window."""


class StallWatchdog:
    """Cancels the current task when nothing arrived for ``limit`` seconds, or when fewer
    than ``min_rate`` bytes a second came over ``limit`` seconds: a server that sends a
    byte now and then would otherwise hold a shard for months (aria2c's
    ``--lowest-speed-limit``, always on). Time paused (our disk, our pacing) is not counted.

    One timer per period, re-armed from the last byte or the window's start, instead of an
    ``asyncio.timeout`` per read (tens of thousands of timers a GiB).
    """

    def __init__(self, limit: float, min_rate: float = 0.0) -> None:
        self.limit = limit
        self.floor = min_rate * limit  # bytes each window of ``limit`` seconds must bring
        self.loop = asyncio.get_running_loop()
        self.last = self.window = self.loop.time()  # the last byte; the window's start
        self.got = 0  # bytes in this window
        self.paused_at: float | None = None
        self.fired: type[TimeoutError] | None = None

    def fed(self, size: int) -> None:
        self.last = self.loop.time()
        self.got += size

    def pause(self) -> None:
        self.paused_at = self.loop.time()

    def resume(self) -> None:
        assert self.paused_at is not None
        paused, self.paused_at = self.loop.time() - self.paused_at, None
        self.last += paused
        self.window += paused

    def _check(self) -> None:
        now = self.loop.time()
        if self.paused_at is not None:  # judged again once resumed
            self.handle = self.loop.call_at(now + self.limit, self._check)
            return
        if now - self.last >= self.limit:
            self._fire(TimeoutError)
            return
        if now - self.window >= self.limit:
            if self.got < self.floor:
                self._fire(Trickle)
                return
            self.window, self.got = now, 0
        self.handle = self.loop.call_at(min(self.last, self.window) + self.limit, self._check)

    def _fire(self, kind: type[TimeoutError]) -> None:
        self.fired = kind
        self.task.cancel()

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
            self.fired is not None
            and kind is asyncio.CancelledError
            and self.task.uncancel() <= self._cancelling
        ):
            raise self.fired from exc
