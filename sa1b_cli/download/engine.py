"""Download orchestration: selection, claims, space check, bounded concurrency, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from sa1b_cli.core.checksums import ChecksumList, load_checksum_lists
from sa1b_cli.core.claims import Claim, try_claim
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.known import load_known
from sa1b_cli.core.manifest import (
    ManifestRow,
    host_of,
    parse_manifest,
    read_manifest,
    read_manifest_text,
)
from sa1b_cli.core.results import ShardResult
from sa1b_cli.core.store import Record, Store
from sa1b_cli.core.text import natural
from sa1b_cli.download.accept import content_range
from sa1b_cli.download.client import make_client
from sa1b_cli.download.config import DownloadConfig
from sa1b_cli.download.controller import (
    ConnectionController,
    ControllerSettings,
    IdleCores,
    ThreadLoad,
)
from sa1b_cli.download.plan import (
    Expected,
    already_complete,
    check_space,
    interrupted,
    plan,
    records,
)
from sa1b_cli.download.ratelimit import RateLimiter
from sa1b_cli.download.redirects import RedirectRefused, send_following
from sa1b_cli.download.transfer import ShardTask, TransferContext, TransferSettings, fetch_shard
from sa1b_cli.download.wire import WireTransport, make_transport

__all__ = ["DownloadReport", "check_run_space", "run_downloads"]

# Connections before the first measurement: aria2c -x16's count. One per shard spent the
# first tenth of a second at a quarter of what a far CDN allows; a first look with no idle
# core (a near server) goes back to one per shard (docs/performance.md).
FIRST_CONNECTIONS = 16

HEARTBEAT_SECONDS = 10.0
UNANSWERED_PROBES = 16  # slow ones in a row, from one host: past a glitch, it is not answering
SLOW_PROBE = 5.0  # seconds a probe waited for nothing: a connect timeout, not a refusal
OnComplete = Callable[[ShardResult], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class DownloadReport:
    results: list[ShardResult]
    expiry: tuple[datetime, datetime] | None
    bytes_to_fetch: int = 0
    warnings: tuple[str, ...] = ()
    connections_peak: int = 0  # the most connections the run held at once


async def _probe_size(client: httpx.AsyncClient, row: ManifestRow) -> tuple[bool, int | None]:
    """Whether the host answered, and the total size from a one-byte Range request (None
    when the server will not say). Every failure is the transfer's to report."""
    headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
    try:
        request = client.build_request("GET", row.url, headers=headers)
        response = await send_following(client, request)
    except (RedirectRefused, httpx.InvalidURL, UnicodeError):  # a link httpx cannot send
        return True, None
    except httpx.HTTPError:
        return False, None
    try:
        total = None
        if response.status_code == 206 and (sent := content_range(response)) is not None:
            total = sent[2]
        elif response.status_code == 200:
            total = natural(response.headers.get("Content-Length", ""))
        # No SA-1B file is empty: a 0 is left for the transfer to refuse, not planned for.
        return True, total or None
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await response.aclose()


async def _sizes(
    client: httpx.AsyncClient,
    records: dict[str, Record | None],
    rows: list[ManifestRow],
    jobs: int,
    clock: Callable[[], float],
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, int | None]:
    """Each file's total size, from its record or a one-byte probe (parallel ranges need it).

    A host that left ``UNANSWERED_PROBES`` probes in a row waiting ``SLOW_PROBE`` seconds
    or more without an answer is probed no more: a host that drops packets cost one
    connect timeout per shard, 8 at a time (an hour for 1000 shards before the first
    transfer began). Its shards find out themselves, on one connection each, as when a
    probe fails. A quick failure (a refusal) costs nothing to repeat, and a moment's
    outage must not leave a whole run without parallel ranges, so it is not counted.
    """
    gate = asyncio.Semaphore(max(jobs, 8))
    unanswered: Counter[str] = Counter()  # slow probes in a row without an answer, by host

    async def size(row: ManifestRow) -> int | None:
        record = records[row.file_name]
        if record is not None and record.expected_size is not None:
            return record.expected_size
        expired = row.expires_at is not None and row.expires_at.timestamp() <= clock()
        if expired:  # never send a request on an expired link
            return None
        host = host_of(row.url)
        async with gate:
            if unanswered[host] >= UNANSWERED_PROBES:
                return None
            began = monotonic()
            answered, total = await _probe_size(client, row)
            slow = monotonic() - began >= SLOW_PROBE
            unanswered[host] = 0 if answered else unanswered[host] + slow
            return total

    found = await asyncio.gather(*(size(r) for r in rows))
    return {row.file_name: total for row, total in zip(rows, found, strict=True)}


async def _heartbeat(claims: dict[str, Claim], sleep: Callable[[float], Awaitable[None]]) -> None:
    while True:
        await sleep(HEARTBEAT_SECONDS)
        for claim in list(claims.values()):
            claim.heartbeat()


async def check_run_space(
    config: DownloadConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Bytes the whole selection still needs; raises NotEnoughSpaceError when they cannot fit.

    ``--workers`` runs this once in the parent, so the shares cannot over-commit the disk.
    """
    store = Store(config.root).ensure()
    pending = plan(read_manifest(config.links), config, store).pending
    found = records(store, pending)
    async with make_client(config.timeout, transport=transport) as client:
        sizes = await _sizes(client, found, pending, config.jobs, clock)
    return check_space(store, found, sizes)


async def run_downloads(
    config: DownloadConfig,
    *,
    sink: ProgressSink | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    stop: asyncio.Event | None = None,
    after: OnComplete | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> DownloadReport:
    """Download the selected files of the manifest into ``config.root``.

    Setting ``stop`` (the CLI does on Ctrl-C) checkpoints every transfer and returns
    a report in which unfinished shards are ``interrupted``. ``after`` runs, as a task,
    for each shard that is complete (``download --extract`` uses it).
    """
    sink = sink or NullSink()
    text = read_manifest_text(config.links)  # read once: parsed, and kept under the root
    manifest = parse_manifest(text, path=config.links)
    store = Store(config.root).ensure()
    store.remember_manifest(text)
    planned = plan(manifest, config, store)
    for done in planned.settled:
        if done.status == "present":
            sink.finished(done)
    transport = make_transport() if transport is None else transport
    async with make_client(config.timeout, transport=transport) as client:
        found = records(store, planned.pending)
        sizes = await _sizes(client, found, planned.pending, config.jobs, clock, monotonic)
        needed = check_space(store, found, sizes) if config.check_space else 0
        sink.planned(needed)
        clocks = (clock, monotonic)
        ctx = _context(config, client, transport, sink=sink, sleep=sleep, clocks=clocks)
        hooks = _Hooks(stop or asyncio.Event(), after, config.stale_after, sizes)
        pool = _Pool(ctx, store, _expected(config), config.jobs, hooks)
        # What is loaded by now lives as long as the run: the collector need not walk it
        # again every time blocks and futures churn (2 % of a download's CPU otherwise).
        gc.freeze()
        fetched = await pool.run(planned.pending)
    order = {n: i for i, n in enumerate(planned.names)}
    results = sorted([*planned.settled, *fetched], key=lambda r: order.get(r.name, len(order)))
    peak = ctx.controller.peak_active
    return DownloadReport(results, manifest.expiry_window(), needed, manifest.warnings, peak)


def _expected(config: DownloadConfig) -> Expected:
    lists = load_checksum_lists(config.checksums) if config.checksums else ChecksumList({})
    known = load_known(config.root, True) if config.known else None
    return Expected(lists, known.md5 if known else {})


def _context(
    config: DownloadConfig,
    client: httpx.AsyncClient,
    transport: httpx.AsyncBaseTransport | None,
    *,
    sink: ProgressSink,
    sleep: Callable[[float], Awaitable[None]],
    clocks: tuple[Callable[[], float], Callable[[], float]],  # wall, monotonic
) -> TransferContext:
    settings = TransferSettings(
        stall_timeout=config.timeout, max_attempts=config.max_attempts, split=config.split
    )
    ceiling = config.connections
    controller = ConnectionController(
        ControllerSettings(
            ceiling=ceiling,
            initial=min(ceiling, max(config.jobs, FIRST_CONNECTIONS)),
            cpu_bound=min(ceiling, config.jobs),
        ),
        idle=IdleCores(),
        # Our transport receives TLS bodies on a few threads: how busy they are says how
        # many more bytes more connections could bring.
        busy=_receiving_load(transport),
        own=ThreadLoad(time.process_time),  # the cores this process used
    )
    limiter = RateLimiter(config.max_rate, sleep=sleep) if config.max_rate else None
    return TransferContext(
        client,
        settings,
        sink=sink,
        sleep=sleep,
        wall_clock=clocks[0],
        monotonic=clocks[1],
        limiter=limiter,
        controller=controller,
    )


def _receiving_load(transport: httpx.AsyncBaseTransport | None) -> Callable[[], float | None]:
    """The busiest receiving thread's share of a core (one file's calls stay on one
    thread: the mean would halve a one-shard run's load, and it grew too far)."""
    if not isinstance(transport, WireTransport):
        return lambda: None  # httpx's own transport, or a test's: no receiving threads
    loads = [ThreadLoad(reactor.used_cpu) for reactor in transport.reactors]

    def busiest() -> float | None:
        return max((x for x in (load() for load in loads) if x is not None), default=None)

    return busiest


class _Pool:
    """The shards of a run, ``jobs`` at a time, each under its claim.

    A shard holds one of ``jobs`` turns until its tail begins (a split shard has handed
    out its last range); then the next shard starts, and takes the connections the tail
    frees as they come (one-connection shards hold their turn to the end).
    """

    def __init__(
        self, ctx: TransferContext, store: Store, checks: Expected, jobs: int, hooks: _Hooks
    ) -> None:
        self.ctx, self.store, self.checks, self.hooks = ctx, store, checks, hooks
        self.turns = asyncio.Semaphore(jobs)
        self.claims: dict[str, Claim] = {}
        self.results: dict[str, ShardResult] = {}
        self.failures: list[BaseException] = []
        self.followers: list[asyncio.Task[None]] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self, rows: list[ManifestRow]) -> list[ShardResult]:
        self._start(self._dispatch(rows))
        side = [
            asyncio.create_task(_heartbeat(self.claims, asyncio.sleep)),  # a timer, not a wait
            asyncio.create_task(_cancel_when(self.hooks.stop, self.tasks)),
            asyncio.create_task(_measure(self.ctx)),
        ]
        try:
            while not all(task.done() for task in self.tasks):  # the dispatcher adds tasks
                await asyncio.gather(*self.tasks, return_exceptions=True)
            await asyncio.gather(*self.followers)
        finally:
            for task in side:
                task.cancel()
            for claim in self.claims.values():
                claim.release()
            with contextlib.suppress(OSError):
                self.store.write_checksum_file()
        for row in rows:
            if row.file_name not in self.results:
                fetched = self.ctx.fetched.get(row.file_name, 0)
                self.results[row.file_name] = interrupted(self.store, row, fetched)
        if self.failures:
            raise self.failures[0]
        return list(self.results.values())

    async def _dispatch(self, rows: list[ManifestRow]) -> None:
        for row in rows:
            await self.turns.acquire()
            if self.hooks.stop.is_set():
                self.turns.release()
                return
            # Counted now: the shards started together all reach the controller only after
            # the first one has asked for its connections.
            arrived = self.ctx.controller.expect()
            release = _once(self.turns.release)
            self._start(self._shard(row, release, arrived))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        """A task of the run; an exception it lets out (a bug) stops the run and is raised."""
        task = asyncio.create_task(work)
        task.add_done_callback(self._crashed)
        self.tasks.append(task)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.failures.append(exc)  # else gather(return_exceptions=True) would drop it
            self.hooks.stop.set()

    async def _shard(
        self, row: ManifestRow, release: Callable[[], None], arrived: Callable[[], None]
    ) -> None:
        try:
            claim = _claim_or_busy(self.store, row.file_name, self.hooks.stale_after)
            if isinstance(claim, Claim):
                result = await self._claimed(row, claim, release, arrived)
            else:
                result = claim  # busy: another process holds it
            if result is None:
                return
            self.results[row.file_name] = result
            self.ctx.sink.finished(result)
            if self.hooks.after is not None and result.ok:
                self.followers.append(asyncio.create_task(self.hooks.after(result)))
        finally:
            arrived()
            release()

    async def _claimed(
        self,
        row: ManifestRow,
        claim: Claim,
        on_tail: Callable[[], None],
        on_start: Callable[[], None],
    ) -> ShardResult | None:
        """The shard under its claim; None after a run-level error (a full disk, or a bug)."""
        self.claims[row.file_name] = claim
        try:
            # Another process may have finished it between our plan and our claim.
            if (done := already_complete(self.store, row)) is not None:
                return done
            expected, sources = self.checks.of(row.file_name)
            size = self.hooks.sizes.get(row.file_name)
            task = ShardTask(row, expected, sources, claim, size, on_tail, on_start)
            return await fetch_shard(task, self.store, self.ctx)
        except Exception as exc:
            # Raised after the others stopped cleanly; never reported as "interrupted".
            self.failures.append(exc)
            self.hooks.stop.set()
            return None
        finally:
            self.claims.pop(row.file_name, None)
            claim.release()


def _claim_or_busy(store: Store, name: str, stale_after: float) -> Claim | ShardResult:
    got = try_claim(store.claims / f"{name}.claim", stale_after=stale_after)
    if isinstance(got, Claim):
        return got
    detail = f"being downloaded by {got.describe()}; run again when it is done"
    return ShardResult(name, "busy", detail=detail)


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return call


async def _measure(ctx: TransferContext) -> None:
    """The controller's clock: one measurement a tick, and the live count to the display."""
    controller = ctx.controller
    shown = -1
    # The first look comes sooner: it only asks whether the connections are capped (and
    # whether the first limit, a guess, fits), and every tenth before the first step counts.
    wait = controller.settings.interval / 2
    while True:
        await asyncio.sleep(wait)  # a timer, not a retry wait
        wait = controller.settings.interval
        controller.tick()
        if controller.active != shown:
            shown = controller.active
            ctx.sink.connections(shown)


async def _cancel_when(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    await stop.wait()
    for task in tasks:
        task.cancel()


@dataclass(frozen=True, slots=True)
class _Hooks:
    stop: asyncio.Event
    after: OnComplete | None = None
    stale_after: float = 120.0
    sizes: dict[str, int | None] = field(default_factory=dict)
