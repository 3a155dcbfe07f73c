"""One shard's transfer: one connection or several parallel Range segments, retries, expiry.

The seams: ``accept`` judges each response before a byte is written (the Range rules),
``receive`` streams an accepted body into the part file at its offset, and ``ledger``
makes progress durable (checkpoints, records, finalise). This module decides what to ask
for next: with a known size and room on the link, the missing ranges are split into
pieces fetched over several connections (``segments``); otherwise, or once a server
answers a segment request with anything but the exact 206 asked for, one connection
resumes from the end of the contiguous prefix (``single``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from sa1b_cli.core.checksums import RECORD_ALGORITHM
from sa1b_cli.core.claims import Claim
from sa1b_cli.core.errors import DiskFullError
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.manifest import ManifestRow, object_path
from sa1b_cli.core.results import EXPIRED_HINT, DownloadStatus, ShardResult
from sa1b_cli.core.store import Store
from sa1b_cli.core.text import format_size
from sa1b_cli.download.accept import Ask, Verdict, judge, retry_after_seconds
from sa1b_cli.download.controller import ConnectionController, ControllerSettings
from sa1b_cli.download.ledger import ClaimLost, Ledger, SizeChanged, kept_spans
from sa1b_cli.download.partfile import PartFile, is_disk_full
from sa1b_cli.download.pieces import Piece, Pieces
from sa1b_cli.download.ratelimit import RateLimiter
from sa1b_cli.download.receive import Overrun, Receiver
from sa1b_cli.download.redirects import RedirectRefused, send_following
from sa1b_cli.download.retries import RetryBudget
from sa1b_cli.download.wire import CHUNK_EXTENSION

__all__ = ["TransferContext", "TransferSettings", "fetch_shard", "retry_after_seconds"]


@dataclass(frozen=True, slots=True)
class TransferSettings:
    stall_timeout: float = 30.0
    max_attempts: int = 8  # attempts in a row without a whole piece landing, per shard
    patience: float = 120.0  # seconds of failing attempts without progress, per shard
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_after_cap: float = 900.0
    block_size: int = 1 << 20  # bytes received (and written) at a time, at most
    reserve: int = 4 << 20  # bytes one receiving thread call may write (<= min_piece)
    checkpoint_bytes: int = 64 << 20
    checkpoint_seconds: float = 2.0
    split: bool = True  # parallel Range segments when the size is known
    per_shard: int = 64  # connections one shard may hold at most
    min_piece: int = 4 << 20  # each request costs ~1 ms of Python: no smaller pieces
    max_piece: int = 256 << 20


@dataclass(slots=True)
class TransferContext:
    """The seams of a transfer: network, clocks, sleep, randomness, progress, connections."""

    client: httpx.AsyncClient
    settings: TransferSettings = field(default_factory=TransferSettings)
    sink: ProgressSink = field(default_factory=NullSink)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    wall_clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    limiter: RateLimiter | None = None
    controller: ConnectionController = field(
        default_factory=lambda: ConnectionController(ControllerSettings(initial=64))
    )
    fetched: dict[str, int] = field(default_factory=dict)  # bytes received, by shard, so far


class _Retry(Exception):
    def __init__(self, reason: str, *, retry_after: float | None = None, push: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.push = push  # the server pushed back: fewer connections


class _Fallback(Exception):
    """A segment request got something other than the exact 206 asked for."""


class _Stop(Exception):
    def __init__(self, result: ShardResult) -> None:
        super().__init__(result.detail)
        self.result = result


_PUSHBACK_STATUS = frozenset({429, 503})
EXPIRED_WHY = "its 'oe' time has passed"
LAND_WITHIN = 3.0  # seconds a stop waits for blocks in flight (a closed socket: one poll)


class _Job:
    """The state of one shard's transfer within one run."""

    def __init__(
        self,
        row: ManifestRow,
        store: Store,
        ctx: TransferContext,
        *,
        expected: dict[str, str],
        sources: dict[str, str],
        claim: Claim | None,
        size_hint: int | None,
        on_tail: Callable[[], None] | None,
        on_start: Callable[[], None],
    ) -> None:
        self.row, self.name, self.store, self.ctx = row, row.file_name, store, ctx
        self.expected = expected
        self.sources = sources  # where each expected digest came from, for the record
        self.size_hint = size_hint
        self.on_tail = on_tail  # told once every range is handed out (the engine starts another)
        self.on_start = on_start  # told when the first connection asks for its slot
        settings = ctx.settings
        self.part = PartFile(store.part_path(self.name), [RECORD_ALGORITHM, *sorted(expected)])
        self.ledger = Ledger(
            store,
            row,
            self.part,
            claim=claim,
            monotonic=ctx.monotonic,
            wall_clock=ctx.wall_clock,
            every_bytes=settings.checkpoint_bytes,
            every_seconds=settings.checkpoint_seconds,
        )
        self.split = settings.split
        self.budget = RetryBudget(
            settings.max_attempts, settings.patience, settings.min_piece, ctx.monotonic
        )
        self._hosts: set[str] = set()  # other hosts a redirect led to, told once each
        self.connections = 0  # the most this shard held at once
        self.fallback: str | None = None
        self._holding = 0
        self._template: tuple[httpx.URL, httpx.Headers, dict[str, Any]] | None = None

    # -- results -------------------------------------------------------------------------

    def _result(
        self, status: DownloadStatus, detail: str | None = None, **extra: Any
    ) -> ShardResult:
        return ShardResult(
            self.name,
            status,
            bytes_done=self.part.written.total(),
            size=self.ledger.expected_size,
            bytes_fetched=self.fetched,
            detail=detail,
            connections=self.connections,
            fallback=self.fallback,
            **extra,
        )

    def _expired(self, why: str) -> _Stop:
        """The when and what next are said once for all expired shards; here only why."""
        kept = self.part.written.total()
        detail = f"{why}; {format_size(kept)} kept" if kept else why
        when = self.row.expires_at
        return _Stop(self._result("expired", detail, expired_at=when, hint=EXPIRED_HINT))

    # -- the shard -------------------------------------------------------------------------

    async def run(self) -> ShardResult:
        previous = self.store.read(self.name)
        kept = None
        resumable = previous and previous.status in ("partial", "expired", "failed")
        if previous and resumable and previous.object_path == object_path(self.row.url):
            kept = kept_spans(previous)
            self.ledger.expected_size = previous.expected_size
        if self.ledger.expected_size is None:
            self.ledger.expected_size = self.size_hint
        if not kept and self._link_expired():  # never started: leave no empty part file behind
            return self._expired(EXPIRED_WHY).result
        async with await self.part.open(keep=kept or kept_spans(None)):
            self.ledger.begin(self.part.written)
            self._start_budget()
            try:
                return await self._loop()
            except (SizeChanged, Overrun) as exc:
                return await self._stopped(self._failed(str(exc)))
            except ClaimLost:
                return self._busy()  # the shard is someone else's now: touch nothing
            except _Stop as stop:
                return await self._stopped(stop.result)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self._land_in_flight()
                    await self.ledger.checkpoint(force=True)  # bytes received are good
                raise
            except OSError as exc:
                if is_disk_full(exc):
                    raise self._disk_full() from exc
                raise

    def _start_budget(self) -> None:
        written = self.part.written.total()
        self.budget.start(written)
        if (size := self.ledger.expected_size) is not None:
            self.budget.refetch_limit = max(0, size - written) + size

    def _failed(self, detail: str) -> ShardResult:
        kept = self.part.written.total()
        return self._result("failed", f"{detail}; {format_size(kept)} kept")

    def _busy(self) -> ShardResult:
        return self._result("busy", "another process took over this shard's claim")

    @property
    def fetched(self) -> int:
        return self.part.arrived

    async def _land_in_flight(self) -> None:
        """Wait (briefly) for blocks still being written, so the record keeps all of them.

        A connection's thread may have written bytes its caller, cancelled, never heard of;
        its closed socket returns it within a poll, and counting it makes the record exact.
        """
        with contextlib.suppress(Exception):  # a timeout or a disk error: keep what landed
            await asyncio.wait_for(self.part.drain(), LAND_WITHIN)
        self.ctx.fetched[self.name] = self.fetched

    async def _stopped(self, result: ShardResult) -> ShardResult:
        await self._land_in_flight()
        try:
            await self.ledger.checkpoint(force=True)
        except ClaimLost:  # the claim went while we stopped: leave it alone
            return self._busy()
        if result.status in ("expired", "failed"):
            await self.ledger.record(result.status, detail=result.detail)
        return result

    def _disk_full(self) -> DiskFullError:
        msg = f"the disk is full while writing {self.part.path.name}"
        hint = (
            f"{self.ledger.durable.total():,} bytes of {self.name} were kept up to the last "
            "checkpoint. Free some space (or use another --root) and run again."
        )
        return DiskFullError(msg, hint=hint)

    async def _loop(self) -> ShardResult:
        mismatches = 0
        while True:
            await self._fetch_all()
            problem = await self.ledger.finalise(self.expected, self.sources)
            if problem is None:
                digests = tuple(sorted((await self.part.digests()).items()))
                return self._result("downloaded", digests=digests)
            mismatches += 1
            if mismatches >= 2:
                raise _Stop(self._result("failed", problem))
            self.ctx.sink.note(self.name, f"{problem}; fetching again from scratch")
            await self.ledger.start_over()

    async def _fetch_all(self) -> None:
        """Until every byte is here: segments while the server honours them, else one stream."""
        size = self.ledger.expected_size
        if self.split and size is not None and self.part.written.prefix() < size:
            try:
                await self._segments(size)
                return
            except _Fallback as fallback:
                self.split = False
                self.fallback = f"{fallback}; fetched over one connection"
                self.ctx.sink.note(self.name, self.fallback)
        async with self._slot() as slot:
            await self._retrying(self._single, slot)

    # -- connections, retries and expiry --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, *, acquired: bool = False) -> AsyncIterator[_Slot]:
        slot = _Slot(self)
        await slot.take(acquired=acquired)
        try:
            yield slot
        finally:
            slot.give()

    def _link_expired(self) -> bool:
        when = self.row.expires_at
        return when is not None and when.timestamp() <= self.ctx.wall_clock()

    def _check_expiry(self) -> None:
        if self._link_expired():
            raise self._expired(EXPIRED_WHY)

    async def _retrying(self, attempt: Callable[[], Awaitable[None]], slot: _Slot) -> None:
        """Run ``attempt`` until it succeeds; failures count against the shard's one budget.

        When the server pushes back and the run holds more connections than it now allows,
        this connection gives its slot up while it waits, and that wait is not a failure.
        """
        controller = self.ctx.controller
        streak = self.budget.streak()
        while True:
            self._check_expiry()
            try:
                await attempt()
                return
            except _Retry as retry:
                if retry.push:
                    controller.pushback(retry.retry_after)
                    if controller.over_limit():
                        slot.give()
                        await self._wait_before_retry(retry)
                        await slot.take()
                        continue
                self.budget.progress(self.part.written.total())
                given_up = streak.failed(retry.reason, fetched=self.fetched)
                if given_up is not None:
                    raise _Stop(self._failed(given_up)) from retry
                await self._wait_before_retry(retry, streak.failures)

    async def _wait_before_retry(self, retry: _Retry, failures: int = 1) -> None:
        settings = self.ctx.settings
        failures = max(1, failures)
        if retry.retry_after is not None:
            delay = min(retry.retry_after, settings.retry_after_cap)
            self.budget.excuse(delay)
        else:
            ceiling = min(settings.backoff_cap, settings.backoff_base * 2 ** (failures - 1))
            delay = ceiling * self.ctx.rng.uniform(0.5, 1.0)
        self.ctx.sink.note(self.name, f"{retry.reason}; retry {failures} in {delay:.1f}s")
        await self.ledger.checkpoint(force=True)
        await self.ctx.sleep(delay)

    def _build(self, ask: Ask) -> httpx.Request:
        """The GET for ``ask``: the client's headers and timeout, and this shard's link.

        Not ``build_request``, which merges the client's URL, headers and cookies anew for
        every request (the link parsed again, a urllib request made for the cookie jar).
        """
        if self._template is None:
            client = self.ctx.client
            timeout = {"timeout": client.timeout.as_dict()}
            self._template = (httpx.URL(self.row.url), client.headers, timeout)
        url, headers, timeout = self._template
        asked = {"Accept-Encoding": "identity"}
        if (wanted := ask.range_header()) is not None:
            asked["Range"] = wanted
        merged = headers.copy()
        merged.update(asked)  # as build_request merges them (the same order on the wire)
        extensions = {**timeout, CHUNK_EXTENSION: self._block_size()}
        return httpx.Request("GET", url, headers=merged, extensions=extensions)

    @contextlib.asynccontextmanager
    async def _request(self, ask: Ask) -> AsyncIterator[tuple[httpx.Response, Verdict]]:
        """Send one GET for ``ask`` and judge the answer; transport errors become retries."""
        client = self.ctx.client
        try:
            async with asyncio.timeout(self.ctx.settings.stall_timeout):
                response = await send_following(client, self._build(ask), on_host=self._moved)
        except TimeoutError as exc:
            msg = "no answer from the server"
            raise _Retry(msg) from exc
        except RedirectRefused as exc:
            raise _Stop(self._failed(f"not followed: {exc.reason}")) from exc
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
            raise _Stop(self._failed(f"the request cannot be sent ({exc})")) from exc
        except httpx.RemoteProtocolError as exc:
            raise _Retry(str(exc)) from exc
        except httpx.TransportError as exc:
            msg = f"network error ({type(exc).__name__})"
            raise _Retry(msg, push=isinstance(exc, httpx.ConnectError)) from exc
        try:
            verdict = await judge(response, ask, now=self.ctx.wall_clock())
            if verdict.kind == "expired":
                raise self._expired(verdict.reason)
            if verdict.kind == "retry":
                push = response.status_code in _PUSHBACK_STATUS
                raise _Retry(verdict.reason, retry_after=verdict.retry_after, push=push)
            if verdict.kind == "reject":
                raise _Stop(self._failed(verdict.reason))
            if verdict.kind == "size_changed" and self.ledger.expected_size is not None:
                assert verdict.total is not None
                raise SizeChanged(self.ledger.expected_size, verdict.total)
            yield response, verdict
        finally:
            await response.aclose()

    def _moved(self, host: str) -> None:
        if host not in self._hosts:
            self._hosts.add(host)
            self.ctx.sink.note(self.name, f"redirected to another host, {host}")

    async def _receive(
        self, response: httpx.Response, pos: int, *, upto: int | None, piece: Piece | None = None
    ) -> None:
        """Stream the body into the part file from ``pos``; a retry if it ends short of ``upto``.

        With ``piece``, it stops at ``piece.end`` (which may shrink while it runs), and that
        is the end it must reach.
        """
        settings = self.ctx.settings
        controller = self.ctx.controller
        block_size = self._block_size()
        receiver = Receiver(
            self.part,
            name=self.name,
            pos=pos,
            sink=self.ctx.sink,
            block_size=block_size,
            reserve=min(settings.reserve, settings.min_piece),
            limiter=self.ctx.limiter,
            counted=controller.counted,
            checkpoint=self.ledger.checkpoint,
            checkpoint_due=self.ledger.due,
            piece=piece,
            end=self.ledger.expected_size,
        )
        controller.streaming += 1
        try:
            await receiver.run(response, settings.stall_timeout)
        except TimeoutError as exc:
            msg = f"no data for {settings.stall_timeout:g}s"
            raise _Retry(msg) from exc
        except httpx.RemoteProtocolError as exc:  # its message is already in words
            raise _Retry(str(exc), push=self.split) from exc
        except httpx.TransportError as exc:
            msg = f"connection dropped ({type(exc).__name__}: {exc})"
            raise _Retry(msg, push=self.split) from exc
        finally:
            controller.streaming -= 1
            self.ctx.fetched[self.name] = self.fetched  # an interrupted run still counts them
        end = piece.end if piece is not None else upto
        if end is not None and receiver.pos < end:
            msg = f"the connection closed {format_size(end - receiver.pos)} before the end"
            raise _Retry(msg)

    def _block_size(self) -> int:
        """Bytes a connection receives and writes at a time (the wire reads this many too).

        Many slow connections: smaller blocks, so the buffers held stay within ~8 MiB.
        """
        share = (8 << 20) // max(1, self.ctx.controller.active)
        return max(256 << 10, min(self.ctx.settings.block_size, share))

    # -- one connection --------------------------------------------------------------------------

    async def _single(self) -> None:
        """One request from the end of the contiguous prefix to the end of the file."""
        await self.part.drain()  # the resume offset must be on disk (or its error raised)
        offset = self.part.written.prefix()
        ask = Ask(offset, None, self.ledger.expected_size, held=offset)
        async with self._request(ask) as (response, verdict):
            if verdict.kind == "whole":
                await self.ledger.learn_size(verdict.total)
                return
            if verdict.kind in ("size_changed", "refused"):  # the size was not known yet
                self.ledger.expected_size = None  # another object: keep nothing of the old one
                await self.ledger.start_over()
                msg = f"{verdict.reason}; starting over"
                raise _Retry(msg)
            if verdict.kind == "mismatch":
                raise _Retry(verdict.reason)
            if verdict.kind == "restart":
                self.ctx.sink.note(self.name, f"{verdict.reason}; starting over")
                await self.ledger.start_over()
                offset = 0
            await self.ledger.learn_size(verdict.total)
            self.ctx.sink.started(self.name, self.ledger.expected_size, self.part.written.total())
            await self._receive(response, offset, upto=self.ledger.expected_size)
            if self.ledger.expected_size is None and not self.part.written.total():
                msg = "the server sent an empty body"  # no SA-1B file is empty
                raise _Retry(msg)

    # -- parallel segments -------------------------------------------------------------------------

    async def _segments(self, size: int) -> None:
        """Fetch the missing ranges over as many connections as the controller allows."""
        settings = self.ctx.settings
        await self.part.drain()
        pieces = Pieces(
            self.part.written, size, min_piece=settings.min_piece, max_piece=settings.max_piece
        )
        self.ctx.sink.started(self.name, size, self.part.written.total())
        workers: set[asyncio.Task[None]] = set()
        controller = self.ctx.controller
        controller.shards += 1
        try:
            while pieces or workers:
                room = bool(pieces) and len(workers) < settings.per_shard
                if workers and not controller.splitting_pays():
                    room = False  # measured: one connection already runs fast
                if room and not workers:
                    self.on_start()
                    await controller.acquire()  # every shard gets one connection
                elif not (room and controller.try_acquire()):
                    # With work left, a freed slot or a new measurement may let it split.
                    await self._wait_for_change(workers, room=bool(pieces))
                    continue
                workers.add(asyncio.create_task(self._worker(pieces, workers)))
                if len(workers) > 1:
                    # Let the other shards woken by the same free slots take theirs: without
                    # this turn, the first to wake took every slot while the others ran on one
                    # connection each, and finished long after it.
                    await asyncio.sleep(0)
        finally:
            controller.shards -= 1
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _wait_for_change(self, workers: set[asyncio.Task[None]], *, room: bool) -> None:
        """Until a worker ends (its error is raised here) or, with work left, a slot frees up."""
        waiters: set[asyncio.Future[Any]] = set(workers)
        room_wait = asyncio.ensure_future(self.ctx.controller.wait_for_room()) if room else None
        if room_wait is not None:
            waiters.add(room_wait)
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if room_wait is not None:
                room_wait.cancel()
        for task in done & workers:
            workers.discard(task)
            task.result()  # a fallback, a stop or a disk error ends the whole shard

    async def _worker(self, pieces: Pieces, workers: set[asyncio.Task[None]]) -> None:
        """One connection: takes pieces lowest first until none is left (holds a slot)."""
        async with self._slot(acquired=True) as slot:
            controller = self.ctx.controller
            while True:
                piece = pieces.take(self._expected(workers), controller.per_connection)
                if piece is None:
                    return
                if not pieces and len(workers) > 1:
                    self._tail()  # every range is handed out: the next shard may have the rest
                try:
                    await self._retrying(functools.partial(self._piece, piece), slot)
                except BaseException:
                    pieces.give_back(piece)
                    raise
                pieces.finished(piece)
                self.budget.progress(self.part.written.total())
                if controller.over_limit():
                    return  # the controller wants fewer connections: give the slot back

    def _expected(self, workers: set[asyncio.Task[None]]) -> int:
        """The connections to size pieces for: its share of the limit, not only those it has.

        Pieces sized for the few connections a shard had right after a step end last and
        hold the digest frontier back; sized for the whole limit, a shard that keeps one
        connection cuts its file into too many pieces. The shards running share the limit.
        """
        controller = self.ctx.controller
        share = controller.limit // max(1, controller.shards)
        return max(len(workers), min(self.ctx.settings.per_shard, share))

    def _tail(self) -> None:
        """Tell the engine once that this split shard's tail has begun: it starts the next.

        From the moment every range is handed out, not only once a connection finds nothing
        left: the next shard then already holds connections when the tail frees slots.
        """
        if self.on_tail is not None:
            self.on_tail()
            self.on_tail = None

    async def _piece(self, piece: Piece) -> None:
        """One request for ``[piece.pos, piece.end)``; stops early if the piece is split."""
        ask = Ask(piece.pos, piece.end, self.ledger.expected_size)
        async with self._request(ask) as (response, verdict):
            if verdict.kind != "append":
                # Anything but the exact 206 asked for never writes into the file.
                raise _Fallback(verdict.reason or f"HTTP {response.status_code} to a range request")
            try:
                await self._receive(response, piece.pos, upto=None, piece=piece)
            finally:
                # After a drop mid-piece: whatever is written from pos on need not come again.
                piece.pos = min(piece.end, max(piece.pos, self.part.written.run_end(piece.pos)))


class _Slot:
    """One connection's place under the controller's limit; given up while it waits."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.held = False

    async def take(self, *, acquired: bool = False) -> None:
        if not acquired:
            self.job.on_start()
            await self.job.ctx.controller.acquire()
        self.held = True
        self.job._holding += 1
        self.job.connections = max(self.job.connections, self.job._holding)

    def give(self) -> None:
        if self.held:
            self.held = False
            self.job._holding -= 1
            self.job.ctx.controller.release()


async def fetch_shard(
    row: ManifestRow,
    store: Store,
    ctx: TransferContext,
    *,
    expected: dict[str, str] | None = None,
    sources: dict[str, str] | None = None,
    claim: Claim | None = None,
    size_hint: int | None = None,
    on_tail: Callable[[], None] | None = None,
    on_start: Callable[[], None] = lambda: None,
) -> ShardResult:
    """Download one file into the store, resuming what is there; never raises for the shard.

    ``expected`` digests are checked on arrival; ``sources`` names where each came from
    ("list", "community") for the record. ``on_start`` is called when its first connection asks
    for a slot (see ``ConnectionController.expect``); ``on_tail`` once, when a shard split
    over several connections has handed out its last range.
    """
    job = _Job(
        row,
        store,
        ctx,
        expected=expected or {},
        sources=sources or {},
        claim=claim,
        size_hint=size_hint,
        on_tail=on_tail,
        on_start=on_start,
    )
    return await job.run()
