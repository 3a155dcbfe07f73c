"""Scheduling: which connections one shard holds, and which piece each of them fetches.

The only code that takes or gives up connection slots or hands out pieces. A shard's
slots (``Slots``) are taken from the run's ``ConnectionController``; ``Segments`` runs the
missing ranges of a shard over as many connections as the controller allows, each one
taking pieces lowest first (``plan.Pieces``) until none is left.

State kept, all of it here: ``Slots.held`` and ``Slots.peak`` (this shard's connections
now, and the most at once); ``Segments.workers`` (one task per connection) and the
``Pieces`` of its ``run`` (what is handed out and what is left); and the two calls owed
to the engine, ``on_start`` (every time a slot is awaited) and ``on_tail`` (once).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sa1b_cli.download.config import TransferSettings
from sa1b_cli.download.controller import ConnectionController
from sa1b_cli.download.plan import Piece, Pieces, SpanSet
from sa1b_cli.download.retries import Retrier

__all__ = ["Segments", "Slot", "Slots"]


class Slots:
    """One shard's places under the controller's limit."""

    def __init__(self, controller: ConnectionController, on_start: Callable[[], None]) -> None:
        self.controller = controller
        self.on_start = on_start  # told when a connection asks for a slot (the engine's count)
        self.held = 0
        self.peak = 0  # the most this shard held at once

    @asynccontextmanager
    async def slot(self, *, acquired: bool = False) -> AsyncIterator[Slot]:
        slot = Slot(self)
        await slot.take(acquired=acquired)
        try:
            yield slot
        finally:
            slot.give()


class Slot:
    """One connection's place; given up while it waits, taken again after."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.held = False

    async def take(self, *, acquired: bool = False) -> None:
        slots = self.slots
        if not acquired:
            slots.on_start()
            await slots.controller.acquire()
        self.held = True
        slots.held += 1
        slots.peak = max(slots.peak, slots.held)

    def give(self) -> None:
        if self.held:
            self.held = False
            self.slots.held -= 1
            self.slots.controller.release()


class Segments:
    """The missing ranges of one shard, fetched over as many connections as are allowed."""

    def __init__(
        self,
        settings: TransferSettings,
        slots: Slots,
        retrier: Retrier,
        fetch: Callable[[Piece], Awaitable[None]],
        on_tail: Callable[[], None] | None,
    ) -> None:
        self.settings, self.slots, self.retrier, self.fetch = settings, slots, retrier, fetch
        self.controller = slots.controller
        self.on_tail = on_tail  # once every range is handed out: the engine starts another
        self.workers: set[asyncio.Task[None]] = set()

    async def run(self, have: SpanSet, size: int) -> None:
        """Until every piece is fetched; the first worker's error ends them all."""
        settings = self.settings
        pieces = Pieces(have, size, min_piece=settings.min_piece, max_piece=settings.max_piece)
        try:
            with self.controller.sharing():
                while pieces or self.workers:
                    if await self._opened(pieces):
                        continue
                    await self._wait_for_change()
        finally:
            for task in self.workers:
                task.cancel()
            await asyncio.gather(*self.workers, return_exceptions=True)

    async def _opened(self, pieces: Pieces) -> bool:
        """Open one more connection if there is work and room for it."""
        workers = self.workers
        room = self._work_for_one_more(pieces) and len(workers) < self.settings.per_shard
        if workers and not self.controller.splitting_pays():
            room = False  # measured: one connection already runs fast
        if room and not workers:
            self.slots.on_start()
            await self.controller.acquire()  # every shard gets one connection
        elif not (room and self.controller.try_acquire()):
            return False  # with work left, a freed slot or a new measurement may let it split
        workers.add(asyncio.create_task(self._worker(pieces)))
        if len(workers) > 1:
            # Let the other shards woken by the same free slots take theirs: without this
            # turn, the first to wake took every slot while the others ran on one each.
            await asyncio.sleep(0)
        return True

    def _work_for_one_more(self, pieces: Pieces) -> bool:
        """A range not handed out yet, or, in the tail, a piece worth splitting.

        (With splits left to the shard's own connections as each finished, the last pieces
        of a run went on at a few capped connections while the freed slots stayed idle.)
        """
        return bool(pieces) or pieces.splittable(self.controller.per_connection)

    async def _wait_for_change(self) -> None:
        """Until a worker ends (its error is raised here), a slot frees up or a measurement
        comes: with ranges left, or in the tail (where a new rate may make a split pay).
        """
        room_wait = asyncio.ensure_future(self.controller.wait_for_room())
        try:
            done, _ = await asyncio.wait(
                {*self.workers, room_wait}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            room_wait.cancel()
        for task in done & self.workers:
            self.workers.discard(task)
            task.result()  # a fallback, a stop or a disk error ends the whole shard

    async def _worker(self, pieces: Pieces) -> None:
        """One connection: takes pieces lowest first until none is left (holds a slot)."""
        async with self.slots.slot(acquired=True) as slot:
            while True:
                piece = pieces.take(self._expected(), self.controller.per_connection)
                if piece is None:
                    return
                if not pieces and len(self.workers) > 1:
                    self._tail()  # every range is handed out: the next shard may have the rest
                try:
                    await self.retrier.run(functools.partial(self.fetch, piece), slot)
                except BaseException:
                    pieces.give_back(piece)
                    raise
                pieces.finished(piece)
                self.retrier.progressed()
                if self.controller.over_limit():
                    return  # the controller wants fewer connections: give the slot back

    def _expected(self) -> int:
        """The connections to size pieces for: its share of the limit, not only those it has.

        Pieces sized for the few connections a shard had right after a step end last and
        hold the digest frontier back; sized for the whole limit, a shard that keeps one
        connection cuts its file into too many pieces. The shards running share the limit.
        """
        controller = self.controller
        share = controller.limit // max(1, controller.shards)
        return max(len(self.workers), min(self.settings.per_shard, share))

    def _tail(self) -> None:
        """Tell the engine once that this split shard's tail has begun: it starts the next.

        From the moment every range is handed out, not only once a connection finds nothing
        left: the next shard then already holds connections when the tail frees slots.
        """
        if self.on_tail is not None:
            self.on_tail()
            self.on_tail = None
