"""Parallel Range segments of one shard against every server behaviour, through MockTransport."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import xxhash

from sa1b_cli.core.manifest import ManifestRow, expiry_of
from sa1b_cli.core.store import Record, Store
from sa1b_cli.download.controller import ConnectionController, ControllerSettings
from sa1b_cli.download.transfer import ShardTask, TransferContext, TransferSettings, fetch_shard
from tests.fakecdn import ChunkedStream, DroppingStream, url_for

NAME = "sa_000003.tar"
NOW = 1_800_000_000.0
Handler = Callable[[int, int | None, bytes], httpx.Response | None]


class SegmentCDN:
    """Serves exact ranges; ``special`` may answer a request itself (by its start offset)."""

    def __init__(self, data: bytes, special: Handler | None = None) -> None:
        self.data = data
        self.special = special
        self.ranges: list[str | None] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("Range")
        self.ranges.append(wanted)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
        start = int(match.group(1)) if match else 0
        end = int(match.group(2)) + 1 if match and match.group(2) else None
        if self.special is not None:
            answer = self.special(start, end, self.data)
            if answer is not None:
                return answer
        if wanted is None:
            return httpx.Response(200, stream=ChunkedStream(self.data, 7000))
        stop = end if end is not None else len(self.data)
        headers = {"Content-Range": f"bytes {start}-{stop - 1}/{len(self.data)}"}
        return httpx.Response(
            206, headers=headers, stream=ChunkedStream(self.data[start:stop], 7000)
        )


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "root").ensure()


@pytest.fixture
def data() -> bytes:
    return random.Random(3).randbytes(400_000)


def row_for(*, oe: int = 0x7FFFFFFF) -> ManifestRow:
    url = url_for(NAME, oe=oe)
    return ManifestRow(NAME, url, "shard", 2, expiry_of(url))


async def fetch(
    cdn: SegmentCDN, store: Store, *, sleeps: Sleeps | None = None, connections=4, others=0
):
    settings = TransferSettings(
        stall_timeout=5, block_size=8192, min_piece=20_000, max_piece=100_000, max_attempts=4
    )
    controller = ConnectionController(ControllerSettings(ceiling=connections, initial=connections))
    controller.shards = others  # shards fetching ranges besides this one
    async with httpx.AsyncClient(transport=httpx.MockTransport(cdn.handle)) as client:
        ctx = TransferContext(
            client,
            settings,
            sleep=sleeps or Sleeps(),
            wall_clock=lambda: NOW,
            rng=random.Random(1),
            controller=controller,
        )
        return await fetch_shard(ShardTask(row_for(), size_hint=len(cdn.data)), store, ctx)


def whole(store: Store) -> bytes:
    return store.final_path(NAME).read_bytes()


def starts(cdn: SegmentCDN) -> list[int]:
    return [int(r.split("=")[1].split("-")[0]) for r in cdn.ranges if r]


async def test_a_shard_is_split_across_connections_and_hashed_in_order(store, data):
    cdn = SegmentCDN(data)
    result = await fetch(cdn, store)
    assert result.status == "downloaded" and result.fallback is None
    assert whole(store) == data
    assert result.connections > 1
    assert len(cdn.ranges) > 2 and all(r and re.fullmatch(r"bytes=\d+-\d*", r) for r in cdn.ranges)
    record = store.read(NAME)
    assert record is not None and record.digests["xxh128"] == xxhash.xxh3_128(data).hexdigest()


@pytest.mark.parametrize(
    ("connections", "others", "first"),
    [(4, 0, "bytes=0-49999"), (8, 1, "bytes=0-49999"), (4, 3, "bytes=0-99999")],
)
async def test_pieces_are_sized_for_the_shards_share_of_the_connections(
    store, data, connections, others, first
):
    cdn = SegmentCDN(data)
    result = await fetch(cdn, store, connections=connections, others=others)
    assert result.status == "downloaded" and whole(store) == data
    # The first piece is taken while the shard holds one connection: a share of the file
    # for its share of the limit (4 of 4, or 4 of 8 with another shard: 400,000 / 8), not
    # for 1 (200,000, cut to max_piece), unless that share is 1 (4 shards, 4 connections).
    assert cdn.ranges[0] == first


async def test_one_connection_once_more_connections_were_measured_to_bring_nothing(store, data):
    cdn = SegmentCDN(data)
    clock = iter(float(t) for t in range(100))
    controller = ConnectionController(
        ControllerSettings(ceiling=4, initial=1), clock=lambda: next(clock)
    )
    controller.try_acquire()  # one busy connection at 100 bytes/s
    controller.streaming = 1
    controller.counted(100)
    controller.tick()  # grows to 2 and tries it
    controller.tick()  # settles
    controller.tick()  # no byte with two, fewer than with one: looked at once more
    controller.tick()  # still none: the step is undone
    assert controller.limit == 1 and not controller.splitting_pays()  # its one slot is busy
    controller.release()
    settings = TransferSettings(block_size=8192, min_piece=20_000, max_piece=100_000)
    async with httpx.AsyncClient(transport=httpx.MockTransport(cdn.handle)) as client:
        ctx = TransferContext(client, settings, wall_clock=lambda: NOW, controller=controller)
        result = await fetch_shard(ShardTask(row_for(), size_hint=len(data)), store, ctx)
    assert result.status == "downloaded" and whole(store) == data
    assert result.connections == 1


class GatedStream(httpx.AsyncByteStream):
    """Sends nothing until the gate opens: every connection asked for stays open meanwhile."""

    def __init__(self, data: bytes, gate: asyncio.Event) -> None:
        self.data, self.gate = data, gate

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self.gate.wait()
        for i in range(0, len(self.data), 7000):
            yield self.data[i : i + 7000]


def gated_cdn(
    data: bytes, gate: asyncio.Event, asked: dict[str, int] | None = None
) -> httpx.MockTransport:
    """Every file is ``data``, served in exact ranges behind ``gate``; ``asked`` counts by name."""

    def handle(request: httpx.Request) -> httpx.Response:
        if asked is not None:
            asked[request.url.path.rsplit("/", 1)[-1]] += 1
        first, last = request.headers["Range"].removeprefix("bytes=").split("-")
        start, stop = int(first), int(last) + 1 if last else len(data)
        headers = {"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"}
        return httpx.Response(206, headers=headers, stream=GatedStream(data[start:stop], gate))

    return httpx.MockTransport(handle)


async def test_slots_that_free_up_are_shared_by_the_shards_waiting_for_them(store, data):
    names = ["sa_000001.tar", "sa_000002.tar"]
    gate = asyncio.Event()
    asked: dict[str, int] = dict.fromkeys(names, 0)
    clock = iter(float(t) for t in range(100))
    controller = ConnectionController(
        ControllerSettings(ceiling=8, initial=2), clock=lambda: next(clock)
    )
    settings = TransferSettings(block_size=8192, min_piece=10_000, max_piece=50_000)
    async with httpx.AsyncClient(transport=gated_cdn(data, gate, asked)) as client:
        ctx = TransferContext(client, settings, wall_clock=lambda: NOW, controller=controller)
        rows = [ManifestRow(n, url_for(n), "shard", 2, expiry_of(url_for(n))) for n in names]
        starting = [controller.expect() for _ in rows]  # started together, as the engine does
        tasks = [
            asyncio.create_task(
                fetch_shard(ShardTask(r, size_hint=len(data), on_start=s), store, ctx)
            )
            for r, s in zip(rows, starting, strict=True)
        ]
        for _ in range(50):
            await asyncio.sleep(0)
        assert asked == dict.fromkeys(names, 1)  # one connection each, both waiting for room
        controller.counted(1000)
        controller.tick()  # the first measurement: capped connections, so the limit grows
        assert controller.limit == 8
        for _ in range(50):
            await asyncio.sleep(0)
        # Before, the first shard to wake took all six free slots: 7 connections against 1.
        assert asked == dict.fromkeys(names, 4)
        gate.set()
        results = await asyncio.gather(*tasks)
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert all(store.final_path(n).read_bytes() == data for n in names)


@pytest.mark.parametrize("connections", [8, 1])
async def test_a_split_shard_lets_the_next_start_once_its_last_range_is_handed_out(
    store, data, connections
):
    gate = asyncio.Event()
    told: list[str] = []
    controller = ConnectionController(ControllerSettings(ceiling=connections, initial=connections))
    settings = TransferSettings(block_size=8192, min_piece=50_000, max_piece=50_000)
    async with httpx.AsyncClient(transport=gated_cdn(data, gate)) as client:
        ctx = TransferContext(client, settings, wall_clock=lambda: NOW, controller=controller)
        task = asyncio.create_task(
            fetch_shard(
                ShardTask(row_for(), size_hint=len(data), on_tail=lambda: told.append("tail")),
                store,
                ctx,
            )
        )
        for _ in range(50):
            await asyncio.sleep(0)
        # 8 x 50,000 bytes: every range is asked for and no body has come yet. Before, the
        # engine heard only once a connection had finished and found nothing left, so the
        # next shard waited for the tail's first free slot. One connection never tells.
        assert told == (["tail"] if connections > 1 else [])
        assert controller.active == connections
        gate.set()
        result = await task
    assert result.status == "downloaded" and whole(store) == data
    assert told == (["tail"] if connections > 1 else [])


async def test_in_the_tail_slots_that_free_up_split_the_pieces_still_running(store, data):
    """Every range is handed out to two slow connections; the limit then grows: the free
    slots take halves of their pieces (before, they stayed idle until one of the two ended).
    """
    gate = asyncio.Event()
    clock = iter(float(t) for t in range(100))
    controller = ConnectionController(
        ControllerSettings(ceiling=8, initial=2), clock=lambda: next(clock)
    )
    settings = TransferSettings(block_size=8192, min_piece=150_000, max_piece=400_000)
    gated, ranges = gated_cdn(data, gate), []

    def handle(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers["Range"])
        return gated.handle_request(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        ctx = TransferContext(client, settings, wall_clock=lambda: NOW, controller=controller)
        task = asyncio.create_task(
            fetch_shard(ShardTask(row_for(), size_hint=len(data)), store, ctx)
        )
        for _ in range(50):
            await asyncio.sleep(0)
        assert ranges == ["bytes=0-149999", "bytes=150000-"]  # all of it handed out
        controller.counted(1000)
        controller.tick()  # capped connections: the limit grows to 8
        for _ in range(50):
            await asyncio.sleep(0)
        assert ranges[2] == "bytes=275000-"  # the second half of the biggest piece
        assert controller.active > 2
        gate.set()
        result = await task
    assert result.status == "downloaded" and whole(store) == data


def test_idle_slots_in_a_runs_tail_are_used_even_after_a_fruitless_step():
    clock = iter(float(t) for t in range(100))
    controller = ConnectionController(
        ControllerSettings(ceiling=16, initial=4), clock=lambda: next(clock)
    )
    for _ in range(4):  # four shards, one connection each
        controller.try_acquire()
    controller.streaming = 4
    controller.counted(400)
    controller.tick()  # grows and tries it
    controller.tick()  # settles
    controller.tick()  # no byte: fewer than before, looked at once more
    controller.tick()  # still none: undone to 4, and more connections do not pay
    assert controller.limit == 4 and not controller.splitting_pays()
    for _ in range(3):  # three shards finish: the last one may use their slots
        controller.release()
    assert controller.splitting_pays()


async def test_one_connection_when_split_is_off(store, data):
    cdn = SegmentCDN(data)
    settings = TransferSettings(split=False, block_size=8192)
    async with httpx.AsyncClient(transport=httpx.MockTransport(cdn.handle)) as client:
        ctx = TransferContext(client, settings, wall_clock=lambda: NOW)
        result = await fetch_shard(ShardTask(row_for(), size_hint=len(data)), store, ctx)
    assert result.status == "downloaded" and cdn.ranges == [None] and result.connections == 1


async def test_a_200_to_a_segment_never_writes_and_the_shard_falls_back(store, data):
    def ignore_past_zero(start: int, end: int | None, body: bytes) -> httpx.Response | None:
        if start > 0 and end is not None:  # a segment: marked "X", so a write would show
            return httpx.Response(200, stream=ChunkedStream(b"X" * len(body), 7000))
        if start > 0:  # the fallback's request: a server that ignores Range sends the file
            return httpx.Response(200, stream=ChunkedStream(body, 7000))
        return None

    cdn = SegmentCDN(data, ignore_past_zero)
    result = await fetch(cdn, store)
    assert result.status == "downloaded"
    segments_past_zero = [r for r in cdn.ranges if re.fullmatch(r"bytes=[1-9]\d*-\d+", r or "")]
    assert segments_past_zero  # they were answered with a 200 of "X"
    assert whole(store) == data  # not one "X" reached the file
    assert result.fallback and "one connection" in result.fallback


@pytest.mark.parametrize("wrong", ["start", "end", "total"])
async def test_a_206_for_another_range_never_writes(store, data, wrong):
    def lying(start: int, end: int | None, body: bytes) -> httpx.Response | None:
        if start == 0 or end is None:
            return None
        first, last, total = start, end - 1, len(body)
        if wrong == "start":
            first -= 1
        elif wrong == "end":
            last -= 1
        else:
            total += 1
        junk = b"Y" * (last - first + 1)
        headers = {"Content-Range": f"bytes {first}-{last}/{total}"}
        return httpx.Response(206, headers=headers, stream=ChunkedStream(junk, 7000))

    cdn = SegmentCDN(data, lying)
    result = await fetch(cdn, store)
    if wrong == "total":  # a shard's size never changes: the shard fails, nothing is final
        assert result.status == "failed" and "now says" in (result.detail or "")
        assert not store.final_path("sa_000000.tar").exists()
        return
    assert result.status == "downloaded" and whole(store) == data
    assert result.fallback


async def test_a_416_in_the_middle_falls_back_without_damage(store, data):
    def refuse(start: int, end: int | None, body: bytes) -> httpx.Response | None:
        if start > 0 and end is not None:
            return httpx.Response(416, headers={"Content-Range": f"bytes */{len(body)}"})
        return None

    cdn = SegmentCDN(data, refuse)
    result = await fetch(cdn, store)
    assert result.status == "downloaded" and whole(store) == data and result.fallback


async def test_a_drop_mid_segment_resumes_that_segment_where_it_stopped(store, data):
    dropped: list[int] = []

    def drop_once(start: int, end: int | None, body: bytes) -> httpx.Response | None:
        if start > 0 and end is not None and not dropped:
            dropped.append(start)
            piece = body[start:end]
            headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(body)}"}
            return httpx.Response(206, headers=headers, stream=DroppingStream(piece, 9000))
        return None

    sleeps = Sleeps()
    cdn = SegmentCDN(data, drop_once)
    result = await fetch(cdn, store, sleeps=sleeps)
    assert result.status == "downloaded" and whole(store) == data and result.fallback is None
    assert dropped[0] + 9000 in starts(cdn)  # the rest of that piece, not the whole piece again
    assert len(sleeps.calls) == 1


async def test_429_on_some_segments_is_retried_after_retry_after(store, data):
    refused: set[int] = set()

    def busy(start: int, end: int | None, body: bytes) -> httpx.Response | None:
        if start > 0 and start not in refused:
            refused.add(start)
            return httpx.Response(429, headers={"Retry-After": "3"}, content=b"slow down")
        return None

    sleeps = Sleeps()
    cdn = SegmentCDN(data, busy)
    result = await fetch(cdn, store, sleeps=sleeps)
    assert result.status == "downloaded" and whole(store) == data and result.fallback is None
    assert sleeps.calls and set(sleeps.calls) == {3.0}
    assert all(starts(cdn).count(s) == 2 for s in refused)  # each refused piece: once more


async def test_403_expired_on_one_segment_stops_the_whole_shard(store, data):
    def expire(start: int, end: int | None, body: bytes) -> httpx.Response | None:
        if start > 0:
            return httpx.Response(403, content=b"URL signature expired")
        return None

    sleeps = Sleeps()
    cdn = SegmentCDN(data, expire)
    result = await fetch(cdn, store, sleeps=sleeps)
    assert result.status == "expired" and sleeps.calls == []
    assert not store.final_path(NAME).exists()
    assert "fresh manifest" in (result.hint or "")


async def test_the_retry_budget_is_one_per_shard(store, data):
    def always_503(start: int, end: int | None, body: bytes) -> httpx.Response | None:
        return httpx.Response(503, content=b"busy") if start > 0 else None

    cdn = SegmentCDN(data, always_503)
    result = await fetch(cdn, store, connections=1)
    assert result.status == "failed" and "HTTP 503" in (result.detail or "")
    assert 4 <= sum(1 for s in starts(cdn) if s > 0) <= 6  # max_attempts=4, not 4 per segment


async def test_resume_fetches_only_the_ranges_not_yet_durable(store, data):
    part = store.part_path(NAME)
    layout = bytearray(b"\0" * 300_000)
    layout[0:100_000] = data[0:100_000]
    layout[200_000:300_000] = data[200_000:300_000]
    part.write_bytes(bytes(layout))
    spans = [[0, 100_000], [200_000, 300_000]]
    store.write(
        Record(
            NAME,
            "partial",
            expected_size=len(data),
            object_path=f"/m1/v/t6/{NAME}",
            durable_bytes=100_000,
            spans=spans,
        )
    )
    cdn = SegmentCDN(data)
    result = await fetch(cdn, store)
    assert result.status == "downloaded" and whole(store) == data
    asked = [r for r in cdn.ranges if r]
    for r in asked:
        first = int(r.split("=")[1].split("-")[0])
        assert 100_000 <= first < 200_000 or first >= 300_000, r
    assert result.bytes_fetched == 200_000
    record = store.read(NAME)
    assert record is not None and record.digests["xxh128"] == xxhash.xxh3_128(data).hexdigest()
