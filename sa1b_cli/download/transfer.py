"""One shard's transfer, top to bottom: resume, fetch every missing byte, finalise.

The rooms it composes, each used once: the shard file (``durable``: what is on disk and
durable), scheduling (``schedule``: slots and pieces), fetching (``fetch``: a request,
its verdict and its body) and the retry policy (``retries``). With a known size and room
on the link, the missing ranges are split into pieces fetched over several connections;
otherwise, or once a server answers a range request with anything but the exact 206
asked for, one connection resumes from the end of the contiguous prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sa1b_cli.core.checksums import RECORD_ALGORITHM
from sa1b_cli.core.claims import Claim
from sa1b_cli.core.errors import DiskFullError
from sa1b_cli.core.manifest import ManifestRow, object_path
from sa1b_cli.core.results import EXPIRED_HINT, DownloadStatus, ShardResult
from sa1b_cli.core.store import Store
from sa1b_cli.core.text import format_size, shown
from sa1b_cli.download.config import TransferContext, TransferSettings
from sa1b_cli.download.durable import (
    ClaimLost,
    NoRoom,
    NotAFile,
    ShardFile,
    SizeChanged,
    is_disk_full,
)
from sa1b_cli.download.fetch import Fetcher
from sa1b_cli.download.plan import SpanSet, kept_spans
from sa1b_cli.download.receive import Endless, Overrun
from sa1b_cli.download.retries import Fallback, Retrier, RetryBudget, Stop
from sa1b_cli.download.schedule import Segments, Slots

__all__ = ["ShardTask", "TransferContext", "TransferSettings", "fetch_shard"]

EXPIRED_WHY = "its 'oe' time has passed"
LAND_WITHIN = 3.0  # seconds a stop waits for blocks in flight (a closed socket: one poll)


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class ShardTask:
    """What the engine asks of one shard: one object, handed down as it is."""

    row: ManifestRow
    expected: Mapping[str, str] = field(default_factory=dict)  # digests checked on arrival
    sources: Mapping[str, str] = field(default_factory=dict)  # where each came from
    claim: Claim | None = None
    size_hint: int | None = None  # the size the plan found, if any
    on_tail: Callable[[], None] | None = None  # once every range is handed out
    on_start: Callable[[], None] = _nothing  # when a connection first asks for a slot


async def fetch_shard(task: ShardTask, store: Store, ctx: TransferContext) -> ShardResult:
    """Download one file into the store, resuming what is there; never raises for the shard.

    ``task.on_start`` is called when its first connection asks for a slot (see
    ``ConnectionController.expect``); ``task.on_tail`` once, when a shard split over
    several connections has handed out its last range.
    """
    return await _Shard(task, store, ctx).run()


class _Shard:
    """The run of one shard: the rooms wired together, and how the shard ends."""

    def __init__(self, task: ShardTask, store: Store, ctx: TransferContext) -> None:
        self.task, self.name, self.store, self.ctx = task, task.row.file_name, store, ctx
        settings = ctx.settings
        self.file = ShardFile(
            store,
            task.row,
            [RECORD_ALGORITHM, *sorted(task.expected)],
            claim=task.claim,
            monotonic=ctx.monotonic,
            wall_clock=ctx.wall_clock,
            every_bytes=settings.checkpoint_bytes,
            every_seconds=settings.checkpoint_seconds,
        )
        self.slots = Slots(ctx.controller, task.on_start)
        self.fetcher = Fetcher(ctx, task.row, self.file)
        self.budget = RetryBudget(
            settings.max_attempts, settings.patience, settings.min_piece, ctx.monotonic
        )
        self.retrier = Retrier(
            self.name,
            self.budget,
            settings.backoff,
            ctx.controller,
            ctx.sink,
            ctx.sleep,
            ctx.rng,
            checkpoint=lambda: self.file.checkpoint(force=True),
            check=self._check,
            counts=lambda: (self.file.written.total(), self.file.arrived),
        )
        self.ends = _Ends(task, self.file, self.slots)
        self.host, self.began = self.fetcher.host, ctx.monotonic()

    async def run(self) -> ShardResult:
        kept = self._resume()
        # Never started: leave no empty part file behind.
        if not kept and self._link_expired():
            return self.ends.expired(EXPIRED_WHY)
        if not kept and (why := self.ctx.hosts.down(self.host)) is not None:
            return self.ends.unreachable(why, self.host)
        held = kept or SpanSet()
        try:
            self.file.check_room(self.file.expected_size, held.total())
            opened = await self.file.open(held)
        except NoRoom as exc:
            return self.ends.result("failed", str(exc))
        except NotAFile as exc:
            return self.ends.result("failed", str(exc), hint=exc.hint)
        async with opened:
            self._start_budget()
            try:
                return await self._loop()
            except SizeChanged as exc:
                return await self._stopped(self.ends.size_changed(exc))
            except (Overrun, NoRoom) as exc:
                return await self._stopped(self.ends.failed(str(exc)))
            except NotAFile as exc:  # at the final name: the checked part file stays
                return await self._stopped(self.ends.failed(str(exc), exc.hint))
            except Endless as exc:  # not the file: nothing of it is worth keeping
                await self.file.start_over()
                return await self._stopped(self.ends.failed(str(exc)))
            except ClaimLost:
                return self.ends.busy()  # the shard is someone else's now: touch nothing
            except Stop as stop:
                if stop.unreachable:  # the others of its host need not spend their budgets too
                    why = f"{self.name} could not connect to {shown(self.host, 80)} and gave up"
                    self.ctx.hosts.gave_up(self.host, self.began, why)
                return await self._stopped(self.ends.of(stop))
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self._land_in_flight()
                    await self.file.checkpoint(force=True)  # bytes received are good
                raise
            except OSError as exc:
                if is_disk_full(exc):
                    raise self.ends.disk_full() from exc
                raise

    def _resume(self) -> SpanSet | None:
        """The spans an earlier run left durable for this same object; the size it knew."""
        previous = self.store.read(self.name)
        resumable = previous and previous.status in ("partial", "expired", "failed")
        kept = None
        if previous and resumable and previous.object_path == object_path(self.task.row.url):
            kept = kept_spans(previous)
            self.file.expected_size = previous.expected_size
        if self.file.expected_size is None:
            self.file.expected_size = self.task.size_hint
        return kept

    def _start_budget(self) -> None:
        written = self.file.written.total()
        self.budget.start(written)
        if (size := self.file.expected_size) is not None:
            self.budget.refetch_limit = max(0, size - written) + size

    async def _loop(self) -> ShardResult:
        for attempt in range(2):
            await self._fetch_all()
            problem = await self.file.finalise(dict(self.task.expected), dict(self.task.sources))
            if problem is None:
                digests = tuple(sorted((await self.file.digests()).items()))
                return self.ends.result("downloaded", digests=digests)
            if attempt:
                break
            self.ctx.sink.note(self.name, f"{problem}; fetching again from scratch")
            await self.file.start_over()
        return await self._stopped(self.ends.result("failed", problem))

    async def _fetch_all(self) -> None:
        """Until every byte is here: segments while the server honours them, else one stream."""
        size = self.file.expected_size
        if self.fetcher.split and size is not None and self.file.written.prefix() < size:
            segments = Segments(
                self.ctx.settings, self.slots, self.retrier, self.fetcher.piece, self.task.on_tail
            )
            try:
                await self.file.drain()
                self.ctx.sink.started(self.name, size, self.file.written.total())
                await segments.run(self.file.written, size)
                return
            except Fallback as fallback:
                self.fetcher.split = False
                self.ends.fallback = f"{fallback}; fetched over one connection"
                self.ctx.sink.note(self.name, self.ends.fallback)
        async with self.slots.slot() as slot:
            await self.retrier.run(self.fetcher.whole, slot)

    # -- expiry, and how the shard ends ------------------------------------------------------

    def _link_expired(self) -> bool:
        when = self.task.row.expires_at
        return when is not None and when.timestamp() <= self.ctx.wall_clock()

    def _check(self) -> None:
        """Before each attempt: not on an expired link, nor on a host another shard found down."""
        if self._link_expired():
            raise Stop.expired(EXPIRED_WHY)
        if (why := self.ctx.hosts.down(self.host)) is not None:
            msg = f"stopped, as {why}"
            raise Stop.failed(msg)

    async def _land_in_flight(self) -> None:
        """Wait (briefly) for blocks still being written, so the record keeps all of them.

        A connection's thread may have written bytes its caller, cancelled, never heard of;
        its closed socket returns it within a poll, and counting it makes the record exact.
        """
        with contextlib.suppress(Exception):  # a timeout or a disk error: keep what landed
            await asyncio.wait_for(self.file.drain(), LAND_WITHIN)
        self.ctx.fetched[self.name] = self.file.arrived

    async def _stopped(self, result: ShardResult) -> ShardResult:
        await self._land_in_flight()
        try:
            await self.file.checkpoint(force=True)
        except ClaimLost:  # the claim went while we stopped: leave it alone
            return self.ends.busy()
        if result.status in ("expired", "failed"):
            await self.file.record(result.status, detail=result.detail)
        return result


class _Ends:
    """How one shard's run ends, as a result: what it holds, how it was fetched, and why."""

    def __init__(self, task: ShardTask, file: ShardFile, slots: Slots) -> None:
        self.task, self.name, self.file, self.slots = task, task.row.file_name, file, slots
        self.fallback: str | None = None  # why it went on over one connection, if it did

    def result(
        self, status: DownloadStatus, detail: str | None = None, **extra: Any
    ) -> ShardResult:
        return ShardResult(
            self.name,
            status,
            bytes_done=self.file.written.total(),
            size=self.file.expected_size,
            bytes_fetched=self.file.arrived,
            detail=detail,
            connections=self.slots.peak,
            fallback=self.fallback,
            **extra,
        )

    def of(self, stop: Stop) -> ShardResult:
        return self.expired(stop.detail) if stop.status == "expired" else self.failed(stop.detail)

    def expired(self, why: str) -> ShardResult:
        """The when and what next are said once for all expired shards; here only why."""
        kept = self.file.written.total()
        detail = f"{why}; {format_size(kept)} kept" if kept else why
        when = self.task.row.expires_at
        return self.result("expired", detail, expired_at=when, hint=EXPIRED_HINT)

    def failed(self, detail: str, hint: str | None = None) -> ShardResult:
        kept = format_size(self.file.written.total())
        return self.result("failed", f"{detail}; {kept} kept", hint=hint)

    def size_changed(self, exc: SizeChanged) -> ShardResult:
        """Kept as it is: the server may be wrong only now, and the known size stays. Should
        the file itself have changed, every later run would fail the same way: say the way out."""
        store = self.file.store
        record, part = (
            shown(str(p), 200) for p in (store.record_path(self.name), store.part_path(self.name))
        )
        hint = (
            "If the file itself changed on the server, delete "
            f"{record} and {part} to start it over, then run the same command."
        )
        return self.failed(str(exc), hint)

    def unreachable(self, why: str, host: str) -> ShardResult:
        """Never tried: another shard of its host could not connect, and nothing answered."""
        hint = f"Check that this machine can reach {shown(host, 80)}, then run the same command."
        return self.result("failed", f"not tried, as {why}", hint=hint)

    def busy(self) -> ShardResult:
        return self.result("busy", "another process took over this shard's claim")

    def disk_full(self) -> DiskFullError:
        msg = f"the disk is full while writing {self.file.part.path.name}"
        hint = (
            f"{self.file.durable.total():,} bytes of {self.name} were kept up to the last "
            "checkpoint. Free some space (or use another --root) and run again."
        )
        return DiskFullError(msg, hint=hint)
