"""After a failed attempt: retry, fall back, or stop; and one shard's budget of retries.

An attempt ends in one of three signals: ``Retry`` (transient: wait, then again),
``Fallback`` (a range request got anything but the exact 206 asked for) or ``Stop``
(this shard ends here, failed or expired). ``Retrier`` runs attempts under the budget.

The budget: failures in a row per connection, and time without progress.

A trickle cannot renew it: only a whole piece's worth of new bytes landing in the part
file does (``renew_every``). Each connection counts its own failures in a row (a
``Streak``): one hiccup that drops every connection of a shard at once is one failure
each, not the shard's whole budget. The shard as a whole bounds the time spent failing
without progress (``patience``; waits the server asked for with Retry-After are not
counted) and the bytes fetched in all (``refetch_limit``: what was missing, plus the
shard's size once more).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from sa1b_cli.core.events import ProgressSink
from sa1b_cli.core.text import counted, format_size
from sa1b_cli.download.controller import ConnectionController

__all__ = ["Backoff", "Fallback", "Retrier", "Retry", "RetryBudget", "Stop", "Streak"]


class Retry(Exception):
    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        push: bool = False,
        unreachable: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.push = push  # the server pushed back: fewer connections
        self.unreachable = unreachable  # no connection to the host could be made


class Fallback(Exception):
    """A segment request got something other than the exact 206 asked for."""


class Stop(Exception):
    """This shard ends now: ``failed``, or ``expired`` (the link's time has passed).

    ``unreachable``: it gave up because no connection to its host could be made.
    """

    def __init__(
        self, status: Literal["failed", "expired"], detail: str, *, unreachable: bool = False
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.unreachable = status, detail, unreachable

    @classmethod
    def failed(cls, detail: str, *, unreachable: bool = False) -> Stop:
        return cls("failed", detail, unreachable=unreachable)

    @classmethod
    def expired(cls, detail: str) -> Stop:
        return cls("expired", detail)


@dataclass(slots=True)
class RetryBudget:
    max_attempts: int
    patience: float
    renew_every: int
    monotonic: Callable[[], float]
    refetch_limit: int | None = None
    written: int = 0  # bytes landed in the part file, as last told
    _mark: int = 0  # bytes written at the last renewal
    _since: float = field(default=0.0)  # when progress last happened

    def start(self, written: int) -> None:
        self.written = self._mark = written
        self._since = self.monotonic()

    def progress(self, written: int) -> None:
        """Bytes written so far; a whole piece more than at the last renewal renews it."""
        self.written = written
        if written < self._mark:  # started over: count from here
            self._mark = written
        elif written - self._mark >= self.renew_every:
            self._mark, self._since = written, self.monotonic()

    def excuse(self, seconds: float) -> None:
        """A wait the server asked for (Retry-After) is not time without progress."""
        self._since += seconds

    def streak(self) -> Streak:
        return Streak(self, self.written)

    def _exhausted(self, failures: int, told: str, fetched: int) -> str | None:
        if failures > self.max_attempts:
            return f"gave up after {counted(failures, 'attempt')} without progress: {told}"
        stalled = self.monotonic() - self._since
        if failures > 1 and stalled > self.patience:
            return f"gave up after {stalled:.0f}s without progress: {told}"
        if self.refetch_limit is not None and fetched > self.refetch_limit:
            limit = format_size(self.refetch_limit)
            return f"gave up after fetching {format_size(fetched)} (at most {limit}): {told}"
        return None


@dataclass(slots=True)
class Streak:
    """One connection's failures in a row; renewed when the shard lands a whole piece more."""

    budget: RetryBudget
    mark: int  # the shard's bytes written when this streak was last renewed
    failures: int = 0
    reason: str = ""
    repeats: int = 0  # how many times in a row ``reason`` was the cause

    def failed(self, reason: str, *, fetched: int) -> str | None:
        """Count one failure: None to try again, else why the shard gives up."""
        if self.budget.written - self.mark >= self.budget.renew_every:
            self.failures, self.repeats, self.mark = 0, 0, self.budget.written
        self.failures += 1
        self.repeats = self.repeats + 1 if reason == self.reason else 1
        self.reason = reason
        told = reason if self.repeats == 1 else f"{reason}, {self.repeats} times"
        return self.budget._exhausted(self.failures, told, fetched)


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 1.0
    cap: float = 60.0
    retry_after_cap: float = 900.0  # seconds of a server's Retry-After honoured, at most


class Slot(Protocol):
    """A connection's place under the controller's limit (``schedule.Slot``)."""

    def give(self) -> None: ...

    async def take(self) -> None: ...


@dataclass(slots=True)
class Retrier:
    """Runs one connection's attempts until one succeeds or the shard's budget says stop."""

    name: str
    budget: RetryBudget
    backoff: Backoff
    controller: ConnectionController
    sink: ProgressSink
    sleep: Callable[[float], Awaitable[None]]
    rng: random.Random
    checkpoint: Callable[[], Awaitable[None]]  # before a wait: what landed is kept
    check: Callable[[], None]  # before each attempt (raises Stop once the link expired)
    counts: Callable[[], tuple[int, int]]  # (bytes written, bytes fetched) of the shard

    async def run(self, attempt: Callable[[], Awaitable[None]], slot: Slot) -> None:
        """Run ``attempt`` until it succeeds; failures count against the shard's one budget.

        The connection gives its slot up while it waits: kept through a backoff, it held
        the other shards up (a host refusing every connection shrank the run to one slot,
        and its shards failed one after another). When the server pushed back and the run
        holds more connections than it now allows, that wait is not a failure.
        """
        streak = self.budget.streak()
        while True:
            self.check()
            try:
                await attempt()
                return
            except Retry as retry:
                if retry.push:
                    self.controller.pushback(retry.retry_after)
                failures, over = 1, retry.push and self.controller.over_limit()
                if not over:
                    written, fetched = self.counts()
                    self.budget.progress(written)
                    given_up = streak.failed(retry.reason, fetched=fetched)
                    if given_up is not None:
                        raise Stop.failed(given_up, unreachable=retry.unreachable) from retry
                    failures = streak.failures
                slot.give()
                with self.controller.waiting_for_slot():
                    await self.wait(retry, failures)
                await self._take_back(slot)

    async def _take_back(self, slot: Slot) -> None:
        """The slot again; the time others held it is not this shard's time without progress."""
        asked = self.budget.monotonic()
        await slot.take()
        self.budget.excuse(self.budget.monotonic() - asked)

    def progressed(self) -> None:
        """A piece landed whole: the budget may renew."""
        self.budget.progress(self.counts()[0])

    async def wait(self, retry: Retry, failures: int = 1) -> None:
        failures = max(1, failures)
        if retry.retry_after is not None:
            delay = min(retry.retry_after, self.backoff.retry_after_cap)
            self.budget.excuse(delay)
        else:
            ceiling = min(self.backoff.cap, self.backoff.base * 2 ** (failures - 1))
            delay = ceiling * self.rng.uniform(0.5, 1.0)
        self.sink.note(self.name, f"{retry.reason}; retry {failures} in {delay:.1f}s")
        await self.checkpoint()
        await self.sleep(delay)
