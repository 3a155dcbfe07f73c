"""The one body path: --max-rate pacing, and a body that runs past the shard's size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest

from sa1b_cli.core.events import NullSink
from sa1b_cli.core.manifest import ManifestRow
from sa1b_cli.core.store import Store
from sa1b_cli.download.durable import ShardFile
from sa1b_cli.download.plan import Piece, SpanSet
from sa1b_cli.download.ratelimit import RateLimiter
from sa1b_cli.download.receive import Overrun, Receiver, Trickle, body_of
from sa1b_cli.download.wire import BODY_EXTENSION

NAME = "sa_000002.tar"


async def stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def shard_file(tmp_path) -> ShardFile:  # type: ignore[no-untyped-def]
    row = ManifestRow(NAME, "https://cdn.example/x/sa_000002.tar?oh=s", "shard", 2, None)
    return ShardFile(
        Store(tmp_path).ensure(), row, ["xxh128"], claim=None, monotonic=lambda: 0.0,
        wall_clock=lambda: 0.0, every_bytes=1 << 40, every_seconds=1e9,
    )  # fmt: skip


def receiving(file: ShardFile, limiter: RateLimiter | None = None) -> Receiver:
    """A receiver from byte 0 of ``file``, reporting nowhere."""
    return Receiver(
        file, pos=0, sink=NullSink(), reserve=4 << 20, limiter=limiter, counted=lambda n: None
    )


async def test_max_rate_books_each_read_before_it_is_made(tmp_path):
    """The fast path under --max-rate: small reads, each paid for before it is asked."""
    events: list[tuple[str, int]] = []

    class Body:
        left = 1 << 20

        async def read_through(self, size, sink):  # type: ignore[no-untyped-def]
            n = min(size, self.left)
            events.append(("read", size))
            if n:
                sink.write(memoryview(bytes(n)))
            sink.landed(None)
            self.left -= n
            return n

    class Limiter(RateLimiter):
        async def acquire(self, nbytes: int) -> None:
            events.append(("book", nbytes))

    response = SimpleNamespace(extensions={BODY_EXTENSION: Body()})

    async with await shard_file(tmp_path).open(SpanSet()) as file:
        receiver = receiving(file, Limiter(1_000_000, sleep=asyncio.sleep))
        await receiver.run(body_of(response, 1 << 20), 30.0)  # type: ignore[arg-type]
    reads = [n for kind, n in events if kind == "read"]
    assert reads and all(n == 100_000 for n in reads)  # a tenth of a second at 1 MB/s
    assert events[0][0] == "book" and all(
        events[i - 1][0] == "book" for i, (kind, _) in enumerate(events) if kind == "read"
    )
    assert (tmp_path / "tars" / f"{NAME}.part").stat().st_size == 1 << 20


@pytest.mark.parametrize("extra", [1, 70_000])
async def test_a_streamed_body_past_the_known_size_fails_after_writing_only_the_size(
    tmp_path, extra
):
    """A chunked body (no Content-Length) is read up to the size; one byte more is an overrun."""
    data = bytes(range(256)) * 400
    chunks = [data[i : i + 7_000] for i in range(0, len(data), 7_000)] + [b"x" * extra]
    response = httpx.Response(200, content=stream(chunks))
    async with await shard_file(tmp_path).open(SpanSet()) as file:
        file.expected_size = len(data)
        receiver = receiving(file)
        with pytest.raises(Overrun):
            await receiver.run(body_of(response, 1 << 20), 30.0)
        await file.drain()
        assert list(file.written) == [(0, len(data))]
    assert (tmp_path / "tars" / f"{NAME}.part").read_bytes() == data


async def test_a_streamed_body_of_exactly_the_size_ends_cleanly(tmp_path):
    data = bytes(range(256)) * 400
    response = httpx.Response(200, content=stream([data[:5000], data[5000:]]))
    async with await shard_file(tmp_path).open(SpanSet()) as file:
        file.expected_size = len(data)
        receiver = receiving(file)
        await receiver.run(body_of(response, 1 << 20), 30.0)
        assert receiver.pos == len(data) and file.written.prefix() == len(data)


async def test_a_slow_body_over_the_floor_is_not_a_stall(tmp_path):
    """A streamed body reports every 50 ms, however little came: the watchdog hears a slow
    body (3.3 KB/s here) and lets it go on while it brings the floor's worth (1 KiB/s)."""

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(40):  # 1.2 s in all, far past the stall timeout
            await asyncio.sleep(0.03)
            yield b"t" * 100

    response = httpx.Response(200, content=trickle())
    async with await shard_file(tmp_path).open(SpanSet()) as file:
        receiver = receiving(file)
        await receiver.run(body_of(response, 1 << 20), 0.25, 1024)
        assert receiver.pos == 4000


async def test_a_trickle_under_the_floor_is_cut_within_a_window(tmp_path):
    """Never silent for the stall timeout, but 333 B/s where 4 KiB/s is the floor."""

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(100):  # 3 s in all if let be
            await asyncio.sleep(0.03)
            yield b"t" * 10

    response = httpx.Response(200, content=trickle())
    loop = asyncio.get_running_loop()
    async with await shard_file(tmp_path).open(SpanSet()) as file:
        receiver = receiving(file)
        started = loop.time()
        with pytest.raises(Trickle):
            await receiver.run(body_of(response, 1 << 20), 0.25, 4096)
        assert loop.time() - started < 1.0
        assert 0 < receiver.pos < 1000  # what came is kept


@pytest.mark.parametrize(("wait", "delay"), [(0.4, 0.0), (0.2, 0.1)])
async def test_waiting_on_our_own_max_rate_is_not_the_servers_silence(tmp_path, wait, delay):
    """Each booking waits ``wait`` s, then the server takes ``delay`` s to answer: together
    longer than the 0.25 s stall timeout, though the server itself is never slow."""

    class SlowLimiter(RateLimiter):
        async def acquire(self, nbytes: int) -> None:
            await asyncio.sleep(wait)

    async def answers() -> AsyncIterator[bytes]:
        for _ in range(5):
            await asyncio.sleep(delay)
            yield b"x" * (64 << 10)

    response = httpx.Response(200, content=answers())
    async with await shard_file(tmp_path).open(SpanSet()) as file:
        receiver = receiving(file, SlowLimiter(100_000, sleep=asyncio.sleep))
        await receiver.run(body_of(response, 1 << 20), 0.25, 1024)
        assert receiver.pos == 5 * (64 << 10)


async def test_a_split_while_a_streamed_body_is_collected_stops_it_at_the_new_end(tmp_path):
    """The body path behind a proxy and in MockTransport honours a split as the wire does."""
    data = bytes(range(256)) * 400
    piece = Piece(0, len(data))

    async def chunks() -> AsyncIterator[bytes]:
        yield data[:7_000]
        piece.end = 20_000  # a tail split on the loop, while this body is being collected
        for i in range(7_000, len(data), 7_000):
            yield data[i : i + 7_000]

    response = httpx.Response(200, content=chunks())
    async with await shard_file(tmp_path).open(SpanSet()) as file:
        file.expected_size = len(data)
        block = file.block(0, len(data), piece)
        n = await body_of(response, 1 << 20).read_through(len(data), block)
        await file.drain()
        assert n == 20_000 and list(file.written) == [(0, 20_000)]
        assert piece.pos == piece.end == 20_000  # the block moved the piece as it wrote
    assert (tmp_path / "tars" / f"{NAME}.part").read_bytes() == data[:20_000]
