"""How many connections the run holds, found by measurement, under a user's ceiling.

A far CDN caps each TCP connection (window / round-trip time), so filling a link takes
several. Nobody can say in advance how many: the controller grows the number while the
total throughput still rises, holds it when a step brings nothing, and shrinks it when
the server pushes back (429/503, resets), honouring Retry-After before it grows again.

Connections cost CPU (receiving, writing, and hashing what arrives ahead of the digest
frontier a second time), so the controller only grows while a core is idle: with none
idle, the link is not what limits, and more connections would only slow the ones there.
Unless the cores are busy with another's work (a training job): while each connection is
capped and this process uses little CPU, the link limits, and capped connections grow.
Nor does a step grow past what the threads receiving TLS bodies can take: busy half
the time, they can take at most twice the bytes (docs/performance.md has the measurements
behind these rules).

Every connection of every shard takes a slot first; a shard's first connection waits
for one, further ones are only taken when a slot is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConnectionController", "ControllerSettings", "IdleCores", "ThreadLoad"]


class IdleCores:
    """Cores the whole machine left idle since the last call (Linux ``/proc/stat``).

    None where that cannot be read: then growth is judged on throughput alone.
    """

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self.stat = stat
        self.cores = os.cpu_count() or 1
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            with self.stat.open("rb") as handle:
                fields = [int(f) for f in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 5:
            return None
        return fields[3] + fields[4], sum(fields[:8])  # (idle + iowait, all) jiffies

    def __call__(self) -> float | None:
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return self.cores * (now[0] - last[0]) / (now[1] - last[1])


class ThreadLoad:
    """How busy a thread was since the last call: its share of a core (None before it ran).

    ``cpu`` gives the CPU seconds it has used so far (0 until it runs). Given a process's
    CPU seconds instead, it says how many cores the process used.
    """

    def __init__(
        self, cpu: Callable[[], float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cpu, self.clock = cpu, clock
        self._last = (clock(), cpu())

    def __call__(self) -> float | None:
        now, used = self.clock(), self.cpu()
        then, before = self._last
        self._last = (now, used)
        if now <= then or used <= 0:
            return None
        return max(0.0, used - before) / (now - then)


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    ceiling: int = 128  # connections in all, whatever the measurements say
    initial: int = 4  # a guess for a far CDN, taken before anything was measured...
    cpu_bound: int = 0  # ...and the limit if the first look finds no idle core (0: keep it)
    interval: float = 0.2  # seconds between two measurements
    growth: float = 2.0  # each step multiplies the limit by this...
    capped_growth: float = 8.0  # ...or by this while each connection is clearly capped
    # bytes/s per connection that says "capped": the one field report for Meta's CDN is
    # about 50 MB/s for one connection from a university cluster.
    capped_below: float = 64 * 2**20
    gain: float = 1.10  # a step must raise throughput by this factor to count
    hold_seconds: float = 3.0  # after a step that brought nothing, probe again this much later
    pushback_hold: float = 5.0  # no growth for this long after the server pushes back
    idle_needed: float = 0.5  # cores that must have been idle over the interval to grow...
    own_busy: float = 0.75  # ...unless connections are capped and we used less than this
    start_limit: float = 2.0  # seconds a step's connections get to start before it is judged


class ConnectionController:
    """Slots for connections; the limit moves with measured throughput and server pushback.

    State, changed only by its own methods: ``limit``; ``active`` (slots taken) and
    ``peak_active``; ``starting`` (shards whose first connection has not asked yet) and
    ``waiting`` (connections waiting for a slot);
    ``shards`` (fetching ranges, ``sharing``) and ``streaming`` (receiving, ``receiving``);
    the bytes ``counted`` and ``per_connection``, measured each ``tick``; ``steps``.
    """

    def __init__(
        self,
        settings: ControllerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        idle: Callable[[], float | None] = lambda: None,
        busy: Callable[[], float | None] = lambda: None,
        own: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.settings, self.clock = settings or ControllerSettings(), clock
        # Over the last interval: idle cores, the receiving thread's share of one, and the
        # cores this process used.
        self.idle, self.busy, self.own = idle, busy, own
        self.limit = max(1, min(self.settings.initial, self.settings.ceiling))
        self.active = 0
        self.streaming = 0  # connections currently receiving a body
        self.starting = 0  # shards started whose first connection has not asked for a slot
        self.waiting = 0  # connections waiting in ``acquire``
        self.shards = 0  # shards fetching ranges now: they share the limit
        self.peak_active = 0
        self._bytes = 0
        self._mark = (clock(), 0)  # (time, bytes) at the last measurement
        self._active_then = 0  # slots taken at the last measurement
        self.per_connection: float | None = None  # bytes/s one connection carried, measured
        self.steps = _Steps(self.settings)
        self._wake = asyncio.Event()

    # -- slots ---------------------------------------------------------------------------

    def expect(self) -> Callable[[], None]:
        """A shard starts: a slot is kept for its first connection until it asks for one
        (else the first shard of a run splits into the slots meant for the others). Returns
        the idempotent call that gives it back: on its first connection, or when it ends.
        """
        self.starting += 1
        pending = True

        def arrived() -> None:
            nonlocal pending
            if pending:
                pending = False
                self.starting -= 1
                self._wake.set()

        return arrived

    def try_acquire(self) -> bool:
        """A further connection for a shard that has one: only from slots nobody awaits."""
        return self.active + self.starting + self.waiting < self.limit and self._take()

    def _take(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        return True

    async def acquire(self) -> None:
        """A shard's first connection (or one given up while waiting to retry)."""
        with self.waiting_for_slot():
            while not self._take():
                self._wake.clear()
                await self._wake.wait()

    @contextlib.contextmanager
    def waiting_for_slot(self) -> Iterator[None]:
        """A connection without a slot that will want one (in ``acquire``, or waiting to
        retry): no further connection of a split takes a slot from it meanwhile."""
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self.active -= 1
        self._wake.set()

    def splitting_pays(self) -> bool:
        """Whether a shard should open more connections than its first: yes until a step
        brought nothing (one per shard fills the link then, and more cost CPU), and yes
        again while slots lie idle (in a run's tail, the last shards would run on one each).
        """
        return self.steps.before is not None or self.steps.more_pays or self.active < self.limit

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """One connection receives a body meanwhile (the per-connection rate counts it)."""
        self.streaming += 1
        try:
            yield
        finally:
            self.streaming -= 1

    @contextlib.contextmanager
    def sharing(self) -> Iterator[None]:
        """One shard fetches ranges meanwhile: the shards doing so share the limit."""
        self.shards += 1
        try:
            yield
        finally:
            self.shards -= 1

    def over_limit(self) -> bool:
        return self.active > self.limit  # a connection gives its slot back after its piece

    async def wait_for_room(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    # -- measurement -----------------------------------------------------------------------

    def counted(self, nbytes: int) -> None:
        self._bytes += nbytes

    def tick(self) -> None:
        """One measurement: grow while throughput rises (none yet: no step), hold when it stops."""
        now = self.clock()
        then, before_bytes = self._mark
        if now - then <= 0:
            return
        rate = (self._bytes - before_bytes) / (now - then)
        self._mark = (now, self._bytes)
        idle, busy, own = self.idle(), self.busy(), self.own()
        ending, self._active_then = self._active_then > self.limit, self.active
        if self.streaming and rate:
            self.per_connection = rate / self.streaming
            self._wake.set()  # shards waiting to split look again at the new measurement
        steps = self.steps
        # With no idle core the CPU limits, not the link; unless each connection is capped
        # and we use little of the CPU: then the link does, and others keep the cores busy.
        no_idle = idle is not None and idle < self.settings.idle_needed
        light = own is not None and own < self.settings.own_busy
        cpu_limits = no_idle and not (light and steps.capped(self.per_connection))
        if steps.blind and rate and (fallback := steps.first_look(cpu_limits, self.limit)):
            self._set_limit(fallback)
            return
        if steps.settling:  # new connections need a moment: judge a step on the interval after
            steps.settle(now, self._bytes, starting=self.streaming * 2 < self.active)
            return
        if steps.before is not None:
            undo = steps.judge(now, self._bytes)
            if undo is not None:
                self._set_limit(undo)
            if steps.before is not None or undo is not None:
                return  # undone, or looked at once more
        if now < steps.hold_until or self.active != self.limit or ending:
            # Held; or the slots are not all in use (more would not help); or connections
            # from before a cut were still ending over the interval: a step measured with
            # their bytes would be judged against them, undone and held for seconds.
            return
        if cpu_limits:
            return  # more connections would only slow the ones there
        if rate and (grown := steps.step(now, rate, self.limit, self.per_connection, busy)):
            self._set_limit(grown)

    def pushback(self, retry_after: float | None = None) -> None:
        """The server said no (429/503, a reset): keep only the connections it serves."""
        keep = self.streaming if self.streaming else self.limit // 2
        self._set_limit(max(1, min(self.limit, keep)))
        self.steps.pushed(self.clock(), retry_after)

    def _set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake.set()


class _Steps:
    """The growth steps as a state machine: tried, let start, judged, then kept or undone.

    State: ``before`` (the throughput before the step being judged; None when none is) and
    ``previous`` (the limit an undo goes back to); ``settling`` until most of a step's
    connections receive (or ``settle_until``); ``judged_from`` (time, bytes) where its
    judged interval began and ``looked_again``; ``hold_until`` (no growth before);
    ``fruitless`` (steps in a row that brought nothing); ``more_pays`` (the last judged
    step raised throughput); ``pushed_back`` (the server has refused connections);
    ``blind`` until the first measured interval has judged the initial limit.
    """

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.before: float | None = None
        self.previous = 0
        self.settling = False
        self.settle_until = 0.0
        self.judged_from = (0.0, 0)
        self.looked_again = False
        self.hold_until = 0.0
        self.fruitless = 0
        self.more_pays = True
        self.pushed_back = False
        self.blind = True

    def first_look(self, cpu_limits: bool, limit: int) -> int | None:
        """Judge the initial limit on the first measured interval: when the CPU limits and
        not the link (a near server), it falls back to ``settings.cpu_bound``.
        """
        self.blind = False
        fallback = self.settings.cpu_bound
        return fallback if cpu_limits and 0 < fallback < limit else None

    def capped(self, per_connection: float | None) -> bool:
        """Whether each connection, as last measured, is held to a rate: the link limits."""
        return per_connection is not None and per_connection < self.settings.capped_below

    def settle(self, now: float, counted: int, *, starting: bool) -> None:
        """Wait while most of a step's new connections are still starting, then judge it.

        A new connection's first byte comes two round trips after it opens (handshake,
        request), later still when the loop is busy. Judged on an interval in which most
        of them had not started, a step that pays looks fruitless, and is undone.
        """
        if starting and now < self.settle_until:
            return
        self.settling = False
        self.judged_from = (now, counted)  # the step is judged from here on
        self.looked_again = False

    def judge(self, now: float, counted: int) -> int | None:
        """Judge the last step: the limit to go back to when it brought nothing, else None.

        Less than before the step (not merely no more) is looked at once more, over both
        intervals (``before`` stays set): bytes are counted when a receive call returns to
        the loop, and a busy loop counts late (an undone step would otherwise hold the run
        at a few connections).
        """
        then, since = self.judged_from
        rate = (counted - since) / max(now - then, 1e-9)
        before = self.before
        assert before is not None
        if rate < before and not self.looked_again:
            self.looked_again = True
            return None
        self.before = None
        if rate < before * self.settings.gain:
            self.hold_until = now + self.settings.hold_seconds * 2**self.fruitless
            self.fruitless = min(self.fruitless + 1, 5)  # probe less and less often
            self.more_pays = False
            return self.previous
        self.fruitless = 0
        self.more_pays = True
        return None

    def step(
        self, now: float, rate: float, limit: int, per_connection: float | None, busy: float | None
    ) -> int:
        """The limit to try next (0 when none can pay), and the step begins.

        ``busy`` is the receiving thread's share of a core: it can take at most ``1/busy``
        times the bytes it takes now, so a step never grows by more than that.
        """
        settings = self.settings
        capped = self.capped(per_connection)
        # Once the server has refused connections it counts them: probe gently from then on
        # (x8 into a 3-connection limit brought 35 refusals against 13 at x2).
        factor = settings.capped_growth if capped and not self.pushed_back else settings.growth
        if busy:  # a step past that only adds handshakes, and is undone (docs/performance.md)
            factor = min(factor, 1 / busy)
        grown = min(settings.ceiling, math.ceil(limit * factor))
        if grown <= limit or factor < settings.gain:  # at the ceiling, or it could not pay
            return 0
        self.before, self.previous = rate, limit
        self.settling = True
        self.settle_until = now + settings.start_limit
        return grown

    def pushed(self, now: float, retry_after: float | None) -> None:
        self.pushed_back = True
        self.before = None
        self.settling = False
        wait = max(retry_after or 0.0, self.settings.pushback_hold)
        self.hold_until = max(self.hold_until, now + wait)
