"""Download orchestration: selection, claims, space check, bounded concurrency, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from sa1b_cli.core.checksums import ChecksumList, load_checksum_lists
from sa1b_cli.core.claims import Claim, try_claim
from sa1b_cli.core.config import SPACE_MARGIN
from sa1b_cli.core.errors import NotEnoughSpaceError
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.known import load_known
from sa1b_cli.core.manifest import Manifest, ManifestRow, object_path, read_manifest
from sa1b_cli.core.results import ShardResult
from sa1b_cli.core.store import Record, Store
from sa1b_cli.download.client import make_client
from sa1b_cli.download.config import DownloadConfig
from sa1b_cli.download.controller import ConnectionController, ControllerSettings, IdleCores
from sa1b_cli.download.ledger import kept_spans
from sa1b_cli.download.ratelimit import RateLimiter
from sa1b_cli.download.redirects import RedirectRefused, send_following
from sa1b_cli.download.transfer import TransferContext, TransferSettings, fetch_shard

__all__ = ["DownloadReport", "check_run_space", "run_downloads"]

HEARTBEAT_SECONDS = 10.0
OnComplete = Callable[[ShardResult], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class DownloadReport:
    results: list[ShardResult]
    expiry: tuple[datetime, datetime] | None
    bytes_to_fetch: int = 0
    warnings: tuple[str, ...] = ()
    connections_peak: int = 0  # the most connections the run held at once


def _already_complete(store: Store, row: ManifestRow) -> ShardResult | None:
    record = store.read(row.file_name)
    try:
        final_size: int | None = store.final_path(row.file_name).stat().st_size
    except FileNotFoundError:
        final_size = None
    if record is None or record.size is None or not record.is_done(final_size):
        return None
    if record.tar_deleted:  # extracted with --delete-tar: done, not to be fetched again
        return ShardResult(row.file_name, "present", size=record.size, detail="tar deleted")
    return ShardResult(
        row.file_name,
        "present",
        bytes_done=record.size,
        size=record.size,
        digests=tuple(sorted(record.digests.items())),
    )


async def _probe_size(client: httpx.AsyncClient, row: ManifestRow) -> int | None:
    """Total size from a one-byte Range request; None when the server will not say."""
    headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
    request = client.build_request("GET", row.url, headers=headers)
    with contextlib.suppress(httpx.HTTPError, RedirectRefused):  # the transfer says why
        response = await send_following(client, request)
        try:
            if response.status_code == 206:
                total = response.headers.get("Content-Range", "").rpartition("/")[2]
                return int(total) if total.isdigit() else None
            if response.status_code == 200:
                length = response.headers.get("Content-Length", "")
                return int(length) if length.isdigit() else None
        finally:
            await response.aclose()
    return None


def _same_object(store: Store, row: ManifestRow) -> Record | None:
    record = store.read(row.file_name)
    return record if record and record.object_path == object_path(row.url) else None


def _records(store: Store, rows: list[ManifestRow]) -> dict[str, Record | None]:
    """Each pending row's record, when it is about the same object (read once per run)."""
    return {row.file_name: _same_object(store, row) for row in rows}


async def _sizes(
    client: httpx.AsyncClient,
    records: dict[str, Record | None],
    rows: list[ManifestRow],
    jobs: int,
    clock: Callable[[], float],
) -> dict[str, int | None]:
    """Each file's total size, from its record or a one-byte probe (parallel ranges need it)."""
    gate = asyncio.Semaphore(max(jobs, 8))

    async def size(row: ManifestRow) -> int | None:
        record = records[row.file_name]
        if record is not None and record.expected_size is not None:
            return record.expected_size
        expired = row.expires_at is not None and row.expires_at.timestamp() <= clock()
        if expired:  # never send a request on an expired link
            return None
        async with gate:
            return await _probe_size(client, row)

    found = await asyncio.gather(*(size(r) for r in rows))
    return {row.file_name: total for row, total in zip(rows, found, strict=True)}


def _check_space(
    store: Store, records: dict[str, Record | None], sizes: dict[str, int | None]
) -> int:
    """Bytes still to fetch; raises NotEnoughSpaceError when they cannot fit."""
    needed = 0
    for name, record in records.items():
        needed += max(0, (sizes.get(name) or 0) - kept_spans(record).total())
    free = shutil.disk_usage(store.tars).free
    margin = min(SPACE_MARGIN, needed // 50)  # records, indexes, filesystem slack
    if needed + margin > free:
        msg = (
            f"the selected shards need {needed / 2**30:,.1f} GiB more, "
            f"but {store.tars} has {free / 2**30:,.1f} GiB free"
        )
        hint = "Free space, pick a smaller --subset, or use --root on a bigger disk."
        raise NotEnoughSpaceError(msg, hint=hint)
    return needed


async def _heartbeat(claims: dict[str, Claim], sleep: Callable[[float], Awaitable[None]]) -> None:
    while True:
        await sleep(HEARTBEAT_SECONDS)
        for claim in list(claims.values()):
            claim.heartbeat()


@dataclass(frozen=True, slots=True)
class _Plan:
    names: list[str]  # the selection, in report order
    pending: list[ManifestRow]  # still to fetch
    settled: list[ShardResult]  # already complete, or not in the manifest


def _plan(manifest: Manifest, config: DownloadConfig, store: Store) -> _Plan:
    names = config.selection.apply(manifest.rows)
    pending: list[ManifestRow] = []
    settled: list[ShardResult] = []
    for name in names:
        row = manifest.rows.get(name)
        if row is None:
            settled.append(ShardResult(name, "no_link", detail="the manifest has no row for it"))
        elif (done := _already_complete(store, row)) is not None:
            settled.append(done)
        else:
            pending.append(row)
    return _Plan(names, pending, settled)


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
    plan = _plan(read_manifest(config.links), config, store)
    records = _records(store, plan.pending)
    async with make_client(config.timeout, transport=transport) as client:
        sizes = await _sizes(client, records, plan.pending, config.jobs, clock)
    return _check_space(store, records, sizes)


async def run_downloads(
    config: DownloadConfig,
    *,
    sink: ProgressSink | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    stop: asyncio.Event | None = None,
    after: OnComplete | None = None,
    clock: Callable[[], float] = time.time,
) -> DownloadReport:
    """Download the selected files of the manifest into ``config.root``.

    Setting ``stop`` (the CLI does on Ctrl-C) checkpoints every transfer and returns
    a report in which unfinished shards are ``interrupted``. ``after`` runs, as a task,
    for each shard that is complete (``download --extract`` uses it).
    """
    sink = sink or NullSink()
    manifest = read_manifest(config.links)
    lists = load_checksum_lists(config.checksums) if config.checksums else ChecksumList({})
    known = load_known(config.root, True) if config.known else None
    checks = Expected(lists, known.md5 if known else {})
    store = Store(config.root).ensure()
    store.remember_manifest(config.links.read_text(encoding="utf-8"))
    plan = _plan(manifest, config, store)
    results = list(plan.settled)
    for done in plan.settled:
        if done.status == "present":
            sink.finished(done)
    pending = plan.pending
    claims: dict[str, Claim] = {}
    async with make_client(config.timeout, transport=transport) as client:
        try:
            records = _records(store, pending)
            sizes = await _sizes(client, records, pending, config.jobs, clock)
            needed = _check_space(store, records, sizes) if config.check_space else 0
            sink.planned(needed)
            ctx = _context(config, client, sink=sink, sleep=sleep, clock=clock)
            # What is loaded by now lives as long as the run: the collector need not walk it
            # again every time blocks and futures churn (2 % of a download's CPU otherwise).
            gc.freeze()
            hooks = _Hooks(stop or asyncio.Event(), after, config.stale_after, sizes)
            results.extend(await _run_pool(ctx, store, pending, checks, claims, config.jobs, hooks))
        finally:
            for claim in claims.values():
                claim.release()
            with contextlib.suppress(OSError):
                store.write_checksum_file()
    order = {n: i for i, n in enumerate(plan.names)}
    results.sort(key=lambda r: order.get(r.name, len(order)))
    peak = ctx.controller.peak_active
    return DownloadReport(results, manifest.expiry_window(), needed, manifest.warnings, peak)


@dataclass(frozen=True, slots=True)
class Expected:
    """Digests checked on arrival: --checksums lists, and the community md5s with --known."""

    lists: ChecksumList
    community: dict[str, str]

    def of(self, name: str) -> tuple[dict[str, str], dict[str, str]]:
        """(alg -> digest, alg -> where it came from); the community md5 wins over a list's."""
        expected = dict(self.lists.expected(name))
        sources = dict.fromkeys(expected, "list")
        if md5 := self.community.get(name):
            expected["md5"], sources["md5"] = md5, "community"
        return expected, sources


def _context(
    config: DownloadConfig,
    client: httpx.AsyncClient,
    *,
    sink: ProgressSink,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
) -> TransferContext:
    settings = TransferSettings(
        stall_timeout=config.timeout, max_attempts=config.max_attempts, split=config.split
    )
    ceiling = config.connections
    controller = ConnectionController(
        ControllerSettings(ceiling=ceiling, initial=min(ceiling, config.jobs)), idle=IdleCores()
    )
    limiter = RateLimiter(config.max_rate, sleep=sleep) if config.max_rate else None
    return TransferContext(
        client,
        settings,
        sink=sink,
        sleep=sleep,
        wall_clock=clock,
        limiter=limiter,
        controller=controller,
    )


async def _run_pool(
    ctx: TransferContext,
    store: Store,
    rows: list[ManifestRow],
    checks: Expected,
    claims: dict[str, Claim],
    jobs: int,
    hooks: _Hooks,
) -> list[ShardResult]:
    # A shard holds one of ``jobs`` turns until its tail begins (a split shard has handed
    # out its last range); then the next shard starts, and takes the connections the tail
    # frees as they come (one-connection shards hold their turn to the end).
    turns = asyncio.Semaphore(jobs)
    results: dict[str, ShardResult] = {}
    failures: list[BaseException] = []
    followers: list[asyncio.Task[None]] = []
    tasks: list[asyncio.Task[None]] = []

    async def shard(
        row: ManifestRow, release: Callable[[], None], arrived: Callable[[], None]
    ) -> None:
        try:
            claim = _claim_or_busy(store, row.file_name, hooks.stale_after)
            if not isinstance(claim, Claim):
                results[row.file_name] = claim
                ctx.sink.finished(claim)
                return
            claims[row.file_name] = claim
            try:
                size = hooks.sizes.get(row.file_name)
                result = await _fetch_claimed(
                    ctx, store, row, checks, claim, size, release, arrived
                )
            except Exception as exc:  # a run-level error such as a full disk, or a bug
                # Raised after the others stopped cleanly; never reported as "interrupted".
                failures.append(exc)
                hooks.stop.set()
                return
            finally:
                claims.pop(row.file_name, None)
                claim.release()
            results[row.file_name] = result
            ctx.sink.finished(result)
            if hooks.after is not None and result.ok:
                followers.append(asyncio.create_task(hooks.after(result)))
        finally:
            arrived()
            release()

    async def dispatch() -> None:
        for row in rows:
            await turns.acquire()
            if hooks.stop.is_set():
                turns.release()
                return
            # Counted now: the shards started together all reach the controller only after
            # the first one has asked for its connections.
            arrived = ctx.controller.expect()
            tasks.append(asyncio.create_task(shard(row, _once(turns.release), arrived)))

    tasks.append(asyncio.create_task(dispatch()))
    side = [
        asyncio.create_task(_heartbeat(claims, asyncio.sleep)),  # a timer, not a retry wait
        asyncio.create_task(_cancel_when(hooks.stop, tasks)),
        asyncio.create_task(_measure(ctx)),
    ]
    try:
        while not all(task.done() for task in tasks):  # the dispatcher adds tasks as it goes
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*followers)
    finally:
        for task in side:
            task.cancel()
    for row in rows:
        if row.file_name not in results:
            results[row.file_name] = _interrupted(store, row, ctx.fetched.get(row.file_name, 0))
    if failures:
        raise failures[0]
    return list(results.values())


def _claim_or_busy(store: Store, name: str, stale_after: float) -> Claim | ShardResult:
    got = try_claim(store.claims / f"{name}.claim", stale_after=stale_after)
    if isinstance(got, Claim):
        return got
    detail = f"being downloaded by {got.describe()}; run again when it is done"
    return ShardResult(name, "busy", detail=detail)


async def _fetch_claimed(
    ctx: TransferContext,
    store: Store,
    row: ManifestRow,
    checks: Expected,
    claim: Claim,
    size: int | None,
    on_tail: Callable[[], None],
    on_start: Callable[[], None],
) -> ShardResult:
    # Another process may have finished it between our plan and our claim.
    done = _already_complete(store, row)
    if done is not None:
        return done
    expected, sources = checks.of(row.file_name)
    return await fetch_shard(
        row,
        store,
        ctx,
        expected=expected,
        sources=sources,
        claim=claim,
        size_hint=size,
        on_tail=on_tail,
        on_start=on_start,
    )


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
    # The first look comes sooner: it only asks whether the connections are capped, and
    # every tenth of a second before the first step is a tenth at --jobs connections.
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


def _interrupted(store: Store, row: ManifestRow, fetched: int) -> ShardResult:
    kept = kept_spans(_same_object(store, row)).total()
    if kept:
        detail = "interrupted; partial bytes kept, run the same command to continue"
    elif fetched:
        detail = "interrupted before its first checkpoint; run the same command to fetch it"
    else:
        detail = "not started; run the same command to fetch it"
    return ShardResult(
        row.file_name, "interrupted", bytes_done=kept, bytes_fetched=fetched, detail=detail
    )


@dataclass(frozen=True, slots=True)
class _Hooks:
    stop: asyncio.Event
    after: OnComplete | None = None
    stale_after: float = 120.0
    sizes: dict[str, int | None] = field(default_factory=dict)
