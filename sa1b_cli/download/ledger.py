"""Durability of one shard's transfer: checkpoints, records, starting over, and finalising.

Only bytes proven durable are trusted: the data is fsync'ed first, then a record naming
exactly those byte ranges is written atomically. A final name only ever holds whole,
checked bytes (digests compared, fsync, rename, then the record says "complete").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

from sa1b_cli.core.claims import Claim
from sa1b_cli.core.manifest import ManifestRow, object_path
from sa1b_cli.core.store import Record, RecordStatus, Store
from sa1b_cli.core.text import format_size
from sa1b_cli.download.partfile import PartFile
from sa1b_cli.download.spans import SpanSet

__all__ = ["ClaimLost", "Ledger", "SizeChanged", "kept_spans"]


class ClaimLost(Exception):
    """Another process took over this shard's claim: touch nothing more."""


class SizeChanged(Exception):
    """A reply implies another total than the one known: a shard's size never changes."""

    def __init__(self, known: int, now: int) -> None:
        said = f"now says {format_size(now)}; it said {format_size(known)} before"
        super().__init__(f"the server {said}")
        self.known, self.now = known, now


def kept_spans(record: Record | None) -> SpanSet:
    """The durable byte ranges a record vouches for (older records name only a prefix)."""
    if record is None:
        return SpanSet()
    if record.spans is not None:
        return SpanSet((start, end) for start, end in record.spans)
    return SpanSet([(0, record.durable_bytes)])


class Ledger:
    """Checkpoints and records for one shard; the one writer of its record (the claim holder)."""

    def __init__(
        self,
        store: Store,
        row: ManifestRow,
        part: PartFile,
        *,
        claim: Claim | None,
        monotonic: Callable[[], float],
        wall_clock: Callable[[], float],
        every_bytes: int,
        every_seconds: float,
    ) -> None:
        self.store, self.row, self.part, self.claim = store, row, part, claim
        self.monotonic, self.wall_clock = monotonic, wall_clock
        self.every_bytes, self.every_seconds = every_bytes, every_seconds
        self.expected_size: int | None = None
        self.durable = SpanSet()
        self._last = (0, 0.0)  # (bytes received, monotonic time) at the last checkpoint
        self._busy = False

    def begin(self, kept: SpanSet) -> None:
        self.durable = kept.copy()
        self._last = (self.part.received, self.monotonic())

    def due(self) -> bool:
        if self._busy:  # one is under way: asking again would only cut blocks short
            return False
        done, when = self._last
        if self.part.received - done >= self.every_bytes:
            return True
        return self.monotonic() - when >= self.every_seconds

    async def checkpoint(self, *, force: bool = False) -> None:
        """fsync, then record the durable ranges; one checkpoint at a time."""
        if self._busy or not (force or self.due()) or self.part.received == self._last[0]:
            return
        self._busy = True
        try:
            received = self.part.received
            self.durable = await self.part.sync()
            self._last = (received, self.monotonic())
            await self.record("partial")
            self.ensure_claim()
        finally:
            self._busy = False

    async def learn_size(self, total: int | None) -> None:
        """Fix the size once known; a different total later raises ``SizeChanged``."""
        if total is None or total == self.expected_size:
            return
        if self.expected_size is not None:
            raise SizeChanged(self.expected_size, total)
        self.expected_size = total
        await self.record("partial")

    async def record(self, status: RecordStatus, **extra: Any) -> None:
        """Write the record from a worker thread: its fsync must not stall every connection."""
        record = Record(
            self.row.file_name,
            status,
            expected_size=self.expected_size,
            object_path=object_path(self.row.url),
            durable_bytes=self.durable.prefix(),
            spans=self.durable.as_list(),
            **extra,
        )
        await asyncio.to_thread(self.store.write, record.with_(updated=self.wall_clock()))

    async def start_over(self) -> None:
        """Drop every byte kept so far, on disk and in the record."""
        await self.part.reset()
        self.durable = SpanSet()
        self._last = (0, self.monotonic())
        await self.record("partial")

    def ensure_claim(self) -> None:
        if self.claim is not None and not self.claim.heartbeat():
            raise ClaimLost

    async def finalise(
        self, expected: dict[str, str], sources: dict[str, str] | None = None
    ) -> str | None:
        """Check size and digests, then fsync + rename. Returns a problem, or None."""
        size = self.part.written.prefix()
        if self.expected_size is not None and size != self.expected_size:
            return f"size {size:,} differs from the {self.expected_size:,} bytes announced"
        digests = await self.part.digests()
        for alg, want in sorted(expected.items()):
            if digests.get(alg) != want:
                return f"{alg} mismatch: expected {want}, got {digests.get(alg)}"
        self.durable = await self.part.sync()
        self.ensure_claim()
        await asyncio.to_thread(self._move_into_place)
        sources = sources or {}
        checked = [f"{alg}={sources.get(alg, 'list')}" for alg in sorted(expected)]
        await self.record(
            "complete", size=size, digests=digests, checked=checked, checked_at=self.wall_clock()
        )
        return None

    def _move_into_place(self) -> None:
        os.replace(self.part.path, self.store.final_path(self.row.file_name))
        _fsync_dir(self.store.tars)


def _fsync_dir(path: os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
