"""The progress protocol between the engines and whatever shows progress (no rich here)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullSink", "Outcome", "ProgressSink"]


class Outcome(Protocol):
    """What every per-shard result (download, verify, extract) shows a sink."""

    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def ok(self) -> bool: ...


class ProgressSink(Protocol):
    """Receives progress; implementations must be cheap, they run on the event loop."""

    def planned(self, nbytes: int) -> None:
        """Adds bytes still to fetch to the run's total (each worker process adds its share)."""

    def started(self, name: str, total: int | None, resumed_from: int) -> None: ...
    def advanced(self, name: str, nbytes: int) -> None: ...
    def note(self, name: str, text: str) -> None: ...
    def finished(self, result: Outcome) -> None: ...
    def connections(self, count: int) -> None:
        """How many connections the run holds now (downloads only)."""


class NullSink:
    """A sink that shows nothing (--quiet, --json, tests)."""

    def planned(self, nbytes: int) -> None:
        pass

    def started(self, name: str, total: int | None, resumed_from: int) -> None:
        pass

    def advanced(self, name: str, nbytes: int) -> None:
        pass

    def note(self, name: str, text: str) -> None:
        pass

    def finished(self, result: Outcome) -> None:
        pass

    def connections(self, count: int) -> None:
        pass
