"""Byte ranges of one file: which are on disk, which are missing (pure, no I/O).

A span is ``(start, end)`` with ``end`` exclusive. A SpanSet keeps disjoint, sorted,
merged spans, so "what is still missing" and "how far is the file whole from byte 0"
are one call each.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

__all__ = ["Span", "SpanSet"]

Span = tuple[int, int]


class SpanSet:
    """Disjoint, sorted byte ranges."""

    __slots__ = ("_spans",)

    def __init__(self, spans: Iterable[Span] = ()) -> None:
        self._spans: list[Span] = []
        for start, end in spans:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        spans = self._spans
        i = bisect_left(spans, (start, start))
        if i and spans[i - 1][1] >= start:  # touches or overlaps the span before
            i -= 1
            start = min(start, spans[i][0])
        j = i
        while j < len(spans) and spans[j][0] <= end:
            end = max(end, spans[j][1])
            j += 1
        spans[i:j] = [(start, end)]

    def prefix(self) -> int:
        """How many bytes from 0 are covered without a gap."""
        return self._spans[0][1] if self._spans and self._spans[0][0] == 0 else 0

    def total(self) -> int:
        return sum(end - start for start, end in self._spans)

    def missing(self, size: int) -> Iterator[Span]:
        """The gaps in ``[0, size)``, in order."""
        pos = 0
        for start, end in self._spans:
            if start >= size:
                break
            if start > pos:
                yield (pos, start)
            pos = max(pos, end)
        if pos < size:
            yield (pos, size)

    def clipped(self, size: int) -> SpanSet:
        return SpanSet((s, min(e, size)) for s, e in self._spans if s < size)

    def covers(self, start: int, end: int) -> bool:
        return self.run_end(start) >= end > start

    def run_end(self, pos: int) -> int:
        """Where the bytes from ``pos`` stop being covered (``pos`` itself if it is a gap)."""
        i = bisect_left(self._spans, (pos + 1, pos + 1)) - 1
        if i >= 0 and self._spans[i][0] <= pos < self._spans[i][1]:
            return self._spans[i][1]
        return pos

    def as_list(self) -> list[list[int]]:
        return [[start, end] for start, end in self._spans]

    def copy(self) -> SpanSet:
        return SpanSet(self._spans)

    def __iter__(self) -> Iterator[Span]:
        return iter(list(self._spans))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpanSet) and other._spans == self._spans

    def __repr__(self) -> str:
        return f"SpanSet({self._spans})"
