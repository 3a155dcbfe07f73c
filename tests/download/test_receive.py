"""The receiver's fast path (the wire transport's read_through) under --max-rate."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from sa1b_cli.core.events import NullSink
from sa1b_cli.download.partfile import PartFile
from sa1b_cli.download.ratelimit import RateLimiter
from sa1b_cli.download.receive import Receiver
from sa1b_cli.download.spans import SpanSet
from sa1b_cli.download.wire import BODY_EXTENSION


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

    async def no_checkpoint() -> None:
        pass

    part = await PartFile(tmp_path / "z.part", ["xxh128"]).open(keep=SpanSet())
    async with part:
        receiver = Receiver(
            part,
            name="z",
            pos=0,
            sink=NullSink(),
            block_size=1 << 20,
            reserve=4 << 20,
            limiter=Limiter(1_000_000, sleep=asyncio.sleep),
            counted=lambda n: None,
            checkpoint=no_checkpoint,
            checkpoint_due=lambda: False,
        )
        await receiver.run(response, 30.0)  # type: ignore[arg-type]
    reads = [n for kind, n in events if kind == "read"]
    assert reads and all(n == 100_000 for n in reads)  # a tenth of a second at 1 MB/s
    assert events[0][0] == "book" and all(
        events[i - 1][0] == "book" for i, (kind, _) in enumerate(events) if kind == "read"
    )
    assert (tmp_path / "z.part").stat().st_size == 1 << 20
