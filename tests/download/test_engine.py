"""run_downloads through MockTransport: planning, claims, space, stop, rate limits."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import namedtuple
from pathlib import Path

import httpx
import pytest

from sa1b_cli.core.claims import try_claim
from sa1b_cli.core.config import parse_rate
from sa1b_cli.core.errors import NotEnoughSpaceError, UsageError
from sa1b_cli.core.events import NullSink
from sa1b_cli.core.manifest import ManifestRow
from sa1b_cli.core.selection import Selection
from sa1b_cli.core.store import Store
from sa1b_cli.download import engine
from sa1b_cli.download.config import DownloadConfig
from sa1b_cli.download.engine import _probe_size, run_downloads
from sa1b_cli.download.ratelimit import RateLimiter
from tests.fakecdn import FakeCDN, StallingStream, url_for

NAMES = ["sa_000000.tar", "sa_000001.tar", "sa_000002.tar"]


def write_links(tmp: Path, names: list[str], *, oe: int = 0x7FFFFFFF) -> Path:
    path = tmp / "links.txt"
    path.write_text("file_name\tcdn_link\n" + "\n".join(f"{n}\t{url_for(n, oe=oe)}" for n in names))
    return path


def config(tmp: Path, names: tuple[str, ...] | None = None, **kw) -> DownloadConfig:
    return DownloadConfig(
        root=tmp / "root", links=tmp / "links.txt", selection=Selection(names), **kw
    )


@pytest.fixture
def cdn(payload: bytes) -> FakeCDN:
    return FakeCDN(dict.fromkeys(NAMES, payload))


async def test_all_selected_are_downloaded_and_unknown_names_reported(tmp_path, cdn, payload):
    write_links(tmp_path, NAMES)
    cfg = config(tmp_path, ("sa_000000.tar", "sa_000001.tar", "sa_000007.tar"), jobs=2)
    report = await run_downloads(cfg, transport=cdn.transport())
    assert {r.name: r.status for r in report.results} == {
        "sa_000000.tar": "downloaded",
        "sa_000001.tar": "downloaded",
        "sa_000007.tar": "no_link",
    }
    assert (tmp_path / "root" / "tars" / "sa_000001.tar").read_bytes() == payload
    assert (tmp_path / "root" / "checksums.xxh128").read_text().count("\n") == 2


async def test_a_shard_claimed_elsewhere_is_busy_and_untouched(tmp_path, cdn):
    write_links(tmp_path, NAMES)
    store = Store(tmp_path / "root").ensure()
    held = try_claim(store.claims / "sa_000001.tar.claim")
    report = await run_downloads(config(tmp_path), transport=cdn.transport())
    statuses = {r.name: r.status for r in report.results}
    assert statuses["sa_000001.tar"] == "busy" and statuses["sa_000000.tar"] == "downloaded"
    assert not any(s.path.endswith("sa_000001.tar") and s.range != "bytes=0-0" for s in cdn.seen)
    assert held is not None


async def test_a_bug_outside_a_transfer_is_raised_never_taken_for_an_interruption(
    tmp_path, cdn, monkeypatch
):
    """An exception a shard's task lets out (here from its claim) reaches the caller, who
    says "unexpected error"; the run's gather would otherwise drop it, and report the shard
    as interrupted with exit 130."""
    write_links(tmp_path, NAMES)
    real = engine._claim_or_busy

    def claim(store, name, stale_after):  # type: ignore[no-untyped-def]
        if name == "sa_000001.tar":
            raise RuntimeError("a bug in claiming")
        return real(store, name, stale_after)

    monkeypatch.setattr(engine, "_claim_or_busy", claim)
    with pytest.raises(RuntimeError, match="a bug in claiming"):
        await run_downloads(config(tmp_path, ("sa_000001.tar",)), transport=cdn.transport())


async def test_not_enough_space_is_refused_before_any_download(tmp_path, cdn, monkeypatch):
    write_links(tmp_path, NAMES)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 0, 1000))
    with pytest.raises(NotEnoughSpaceError, match="need"):
        await run_downloads(config(tmp_path), transport=cdn.transport())
    assert all(s.range == "bytes=0-0" for s in cdn.seen)  # probes only


async def test_expired_links_get_no_request_at_all(tmp_path, cdn):
    write_links(tmp_path, NAMES, oe=1_000_000)
    report = await run_downloads(config(tmp_path), transport=cdn.transport())
    assert {r.status for r in report.results} == {"expired"}
    assert cdn.seen == []


async def test_stop_event_interrupts_and_keeps_bytes(tmp_path, payload):
    write_links(tmp_path, NAMES[:1])

    class Stalling(FakeCDN):
        def handle(self, request):  # type: ignore[no-untyped-def]
            response = super().handle(request)
            if request.headers.get("Range") != "bytes=0-0":
                response.stream = StallingStream(payload, 120_000)
            return response

    class Counting(NullSink):
        received = 0

        def advanced(self, name: str, nbytes: int) -> None:
            Counting.received += nbytes

    stop = asyncio.Event()
    cdn = Stalling({NAMES[0]: payload})
    run = run_downloads(config(tmp_path), transport=cdn.transport(), stop=stop, sink=Counting())
    task = asyncio.create_task(run)
    part = tmp_path / "root" / "tars" / f"{NAMES[0]}.part"
    for _ in range(500):
        await asyncio.sleep(0.01)
        if any(s.range is None for s in cdn.seen):
            break
    await asyncio.sleep(0.2)  # the 120,000 bytes arrive, then the stream stalls
    assert not part.exists() or part.stat().st_size == 0  # still buffered in memory
    stop.set()
    report = await asyncio.wait_for(task, 10)
    (result,) = report.results
    assert result.status == "interrupted"
    assert result.bytes_fetched == 120_000  # the summary counts what arrived before the stop
    assert part.stat().st_size == 120_000
    record = Store(tmp_path / "root").read(NAMES[0])
    assert record is not None and record.durable_bytes == 120_000


async def test_rate_limiter_paces_the_total():
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(1000.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        await limiter.acquire(1000)
    assert sum(slept) == pytest.approx(4.0)  # 5000 bytes at 1000/s, first second is burst
    await RateLimiter(None, sleep=sleep).acquire(10**9)
    assert len(slept) == 4


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("200M", 200 * 2**20),  # binary, like every size sa1b shows
        ("1.5G", 1.5 * 2**30),
        ("50MiB", 50 * 2**20),
        ("100MB/s", 100 * 2**20),
        ("512k", 512 * 2**10),
        ("0", None),
        (None, None),
    ],
)
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


def test_parse_rate_rejects_garbage():
    with pytest.raises(UsageError):
        parse_rate("fast")


async def test_max_rate_paces_the_whole_run(tmp_path, cdn, payload):
    write_links(tmp_path, NAMES[:1])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    report = await run_downloads(
        config(tmp_path, max_rate=100_000.0), transport=cdn.transport(), sleep=sleep
    )
    assert report.results[0].status == "downloaded"
    # 300,000 bytes at 100 kB/s, the first second free; the fake sleep never advances time,
    # so the limiter's own bookings add up to at least the paced time.
    assert sum(slept) >= len(payload) / 100_000 - 1.0 - 0.01


async def test_run_space_check_covers_the_whole_selection(tmp_path, cdn, payload, monkeypatch):
    from sa1b_cli.download.engine import check_run_space

    write_links(tmp_path, NAMES)
    assert await check_run_space(config(tmp_path), transport=cdn.transport()) == 3 * len(payload)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**7, 0, 2 * len(payload)))
    with pytest.raises(NotEnoughSpaceError):
        await check_run_space(config(tmp_path), transport=cdn.transport())


async def test_a_bug_in_a_shard_is_raised_not_reported_as_interrupted(tmp_path, cdn, monkeypatch):
    """A shard's unexpected exception used to end as "interrupted" (exit 130), hiding it."""
    write_links(tmp_path, NAMES)

    async def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise TypeError("a bug")

    monkeypatch.setattr("sa1b_cli.download.engine.fetch_shard", broken)
    with pytest.raises(TypeError, match="a bug"):
        await run_downloads(config(tmp_path), transport=cdn.transport())


async def test_the_shards_started_together_each_get_their_own_connection(tmp_path, cdn):
    """The first shard must not split into the slots the others are about to ask for."""
    write_links(tmp_path, NAMES)
    run = config(tmp_path, jobs=3, connections=3)  # as many slots as shards
    report = await run_downloads(run, transport=cdn.transport())
    assert {r.status for r in report.results} == {"downloaded"}
    assert [r.connections for r in report.results] == [1, 1, 1]


class Dilated:
    """A clock on which a second passes in 10 ms: backoff and patience play out for real,
    the connections' waits and their order included, in a fraction of the time."""

    SCALE = 100.0  # 200 let a busy 2-core CI machine's own slowness count as 500 s of waiting

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.start) * self.SCALE

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.SCALE)


async def test_a_host_that_refuses_every_connection_fails_its_shards_side_by_side(tmp_path):
    """The shards tried first fail on their own budget (about two minutes), not after the
    others' backoff; once one has given up, the rest stop (the tests below).

    Each refusal shrank the run to one connection, which a shard then kept through its
    backoff sleeps: the other shards waited for it, and ten failed one after another
    (548 s on defaults). A connection now gives its slot up while it waits.
    """
    names = [f"sa_{k:06d}.tar" for k in range(6)]
    write_links(tmp_path, names)
    clock = Dilated()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    run = config(tmp_path, jobs=3)
    transport = httpx.MockTransport(refuse)
    report = await run_downloads(run, transport=transport, sleep=clock.sleep, monotonic=clock.now)
    assert [r.status for r in report.results] == ["failed"] * 6
    for result in report.results:  # on its own clock: patience, one last backoff, slack
        assert "could not connect" in (result.detail or "")
        waited = re.search(r"after (\d+)s without progress", result.detail or "")
        assert waited is None or int(waited[1]) <= 200, result.detail  # the old code: 449 s
    assert clock.now() < 2 * 200  # two rounds of three shards (about 275 s), at most


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


GAVE_UP, STOPPED, NOT_TRIED = "gave up after", "stopped, as ", "not tried, as "


async def test_a_server_nobody_can_reach_costs_one_budget_not_one_per_shard(tmp_path):
    """40 shards on a server that refuses every connection: when the first gives up, the
    others stop, without a request. Before, each spent its own budget in turn, three at a
    time."""
    names = [f"sa_{k:06d}.tar" for k in range(40)]
    write_links(tmp_path, names)
    clock, seen = Dilated(), []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Range"))
        return refused(request)

    run = config(tmp_path, jobs=3)
    transport = httpx.MockTransport(refuse)
    report = await run_downloads(run, transport=transport, sleep=clock.sleep, monotonic=clock.now)
    details = [r.detail or "" for r in report.results]
    assert [r.status for r in report.results] == ["failed"] * 40
    assert all(d.startswith((GAVE_UP, STOPPED, NOT_TRIED)) for d in details), details
    assert sum(d.startswith(NOT_TRIED) for d in details) == 37  # all but the three run first
    # One budget (120 s) and one last backoff (60 s), with slack for a slow machine; the
    # 14 rounds took some 1,900 s here, with 400 requests.
    assert clock.now() < 500
    assert seen.count("bytes=0-0") == 40  # a refusal is quick: every shard's probe is sent
    assert len(seen) < 150, len(seen)  # the probes and three shards' attempts
    hints = {r.hint for r in report.results if (r.detail or "").startswith(NOT_TRIED)}
    assert hints == {
        "Check that this machine can reach scontent.xx.fbcdn.net, then run the same command."
    }
    tried = {f"{r.name}.part" for r in report.results if not (r.detail or "").startswith(NOT_TRIED)}
    parts = {p.name for p in (tmp_path / "root" / "tars").glob("*.part")}
    assert parts <= tried  # a shard not tried leaves no empty file behind


async def test_a_server_that_drops_packets_is_probed_16_times_then_given_up_once(tmp_path):
    """Each connection waits for its timeout (30 s) and fails: the size probes stop after
    16 of those, and the shards after one budget. The code before spent 40 connect
    timeouts on probes, 8 at a time, then a budget on each shard, three at a time."""
    names = [f"sa_{k:06d}.tar" for k in range(40)]
    write_links(tmp_path, names)
    clock, seen = Dilated(), []

    async def silent(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Range"))
        await clock.sleep(30)
        raise httpx.ConnectTimeout("could not connect in time", request=request)

    run = config(tmp_path, jobs=3)
    transport = httpx.MockTransport(silent)
    report = await run_downloads(run, transport=transport, sleep=clock.sleep, monotonic=clock.now)
    details = [r.detail or "" for r in report.results]
    # 16 in a row came back unanswered; a few more may have begun meanwhile (8 at a time)
    assert 16 <= seen.count("bytes=0-0") < 24
    assert sum(d.startswith(NOT_TRIED) for d in details) == 37, details
    assert "could not connect (no answer in time)" in details[0]
    assert clock.now() < 2 * 30 + 400  # the probes, then one budget with its last timeout


async def test_a_moment_of_refusals_leaves_every_shard_its_size_probe(tmp_path, payload):
    """The first 20 connections are refused, quickly; then the server answers. Every shard
    is still probed (a probe skipped would leave its shard on one connection), and lands."""
    names = [f"sa_{k:06d}.tar" for k in range(30)]
    write_links(tmp_path, names)
    cdn, clock, seen = FakeCDN(dict.fromkeys(names, payload)), Dilated(), []

    def blip(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Range"))
        return refused(request) if len(seen) <= 20 else cdn.handle(request)

    run = config(tmp_path, jobs=3)
    transport = httpx.MockTransport(blip)
    report = await run_downloads(run, transport=transport, sleep=clock.sleep, monotonic=clock.now)
    assert seen.count("bytes=0-0") == 30
    assert {r.status for r in report.results} == {"downloaded"}


async def test_the_shards_of_a_server_that_answers_go_on(tmp_path, payload):
    """The dead server's shards stop; another server's, in the same run, all land."""
    dead = [f"sa_{k:06d}.tar" for k in range(10)]
    alive = [f"sa_{k:06d}.tar" for k in range(10, 13)]
    rows = [f"{n}\t{url_for(n).replace('scontent.xx', 'dead.xx')}" for n in dead]
    rows += [f"{n}\t{url_for(n)}" for n in alive]
    (tmp_path / "links.txt").write_text("file_name\tcdn_link\n" + "\n".join(rows) + "\n")
    cdn, clock = FakeCDN(dict.fromkeys(alive, payload)), Dilated()

    def route(request: httpx.Request) -> httpx.Response:
        return refused(request) if request.url.host.startswith("dead.") else cdn.handle(request)

    run = config(tmp_path, jobs=3)
    transport = httpx.MockTransport(route)
    report = await run_downloads(run, transport=transport, sleep=clock.sleep, monotonic=clock.now)
    status = {r.name: r.status for r in report.results}
    assert [status[n] for n in alive] == ["downloaded"] * 3
    assert [status[n] for n in dead] == ["failed"] * 10
    not_tried = [d for r in report.results if (d := r.detail or "").startswith(NOT_TRIED)]
    assert len(not_tried) >= 10 - 3 and all("dead.xx.fbcdn.net" in d for d in not_tried)


async def test_a_server_gone_after_a_shard_costs_the_next_shard_its_budget_and_no_more(
    tmp_path, payload
):
    """One shard at a time: the first lands, then the server goes away. The second gives up
    on its own budget (the server answered, but before it began); the rest are not tried."""
    names = [f"sa_{k:06d}.tar" for k in range(5)]
    write_links(tmp_path, names)
    cdn, clock = FakeCDN({names[0]: payload}), Dilated()

    def first_only(request: httpx.Request) -> httpx.Response:
        return cdn.handle(request) if names[0] in request.url.path else refused(request)

    run = config(tmp_path, jobs=1)
    transport = httpx.MockTransport(first_only)
    report = await run_downloads(run, transport=transport, sleep=clock.sleep, monotonic=clock.now)
    assert [r.status for r in report.results] == ["downloaded"] + ["failed"] * 4
    details = [r.detail or "" for r in report.results[1:]]
    assert details[0].startswith(GAVE_UP) and all(d.startswith(NOT_TRIED) for d in details[1:])


@pytest.mark.parametrize(
    ("status", "headers", "size"),
    [
        (206, {"Content-Range": "bytes 0-0/1000"}, 1000),
        (200, {"Content-Length": "1000"}, 1000),
        (206, {"Content-Range": "junk/1000"}, None),  # not a range: no size to plan from
        (206, {"Content-Range": "bytes 0-0/*"}, None),
        (206, {"Content-Range": "bytes 0-0/\u00b2".encode()}, None),
        (206, {"Content-Range": "bytes 0-0/0"}, None),  # left for the transfer to refuse
        (200, {"Content-Length": "0"}, None),
        (200, {}, None),
        (404, {"Content-Length": "1000"}, None),
    ],
)
async def test_a_size_probe_plans_only_from_a_whole_answer(status, headers, size):
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["Range"] == "bytes=0-0"
        return httpx.Response(status, headers=headers, content=b"" if status == 200 else b"x")

    row = ManifestRow(NAMES[0], url_for(NAMES[0]), "shard", 2, None)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        assert await _probe_size(client, row) == (True, size)
