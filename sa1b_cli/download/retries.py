"""One shard's retry budget: failures in a row per connection, and time without progress.

A trickle cannot renew it: only a whole piece's worth of new bytes landing in the part
file does (``renew_every``). Each connection counts its own failures in a row (a
``Streak``): one hiccup that drops every connection of a shard at once is one failure
each, not the shard's whole budget. The shard as a whole bounds the time spent failing
without progress (``patience``; waits the server asked for with Retry-After are not
counted) and the bytes fetched in all (``refetch_limit``: what was missing, plus the
shard's size once more).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sa1b_cli.core.text import format_size

__all__ = ["RetryBudget", "Streak"]


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
            return f"gave up after {failures} attempts without progress: {told}"
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
