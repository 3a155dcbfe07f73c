"""Which byte ranges of a shard the next connection should fetch (pure, no I/O).

Pieces are handed out lowest offset first, so every connection works close to the digest
frontier (the reorder window stays a few pieces wide). Their size shrinks as the work
left shrinks (guided self-scheduling): large pieces early keep requests few, small ones
at the end keep every connection busy until the last byte.
"""

from __future__ import annotations

from bisect import insort

from sa1b_cli.download.spans import Span, SpanSet

__all__ = ["Pieces"]


class Pieces:
    """The unassigned ranges of one file."""

    def __init__(self, have: SpanSet, size: int, *, min_piece: int, max_piece: int) -> None:
        self.todo: list[Span] = list(have.missing(size))
        self.min_piece = min_piece
        self.max_piece = max_piece

    def left(self) -> int:
        return sum(end - start for start, end in self.todo)

    def __bool__(self) -> bool:
        return bool(self.todo)

    def take(self, workers: int) -> Span | None:
        """The next piece for one of ``workers`` connections, or None when all are assigned."""
        if not self.todo:
            return None
        start, end = self.todo[0]
        share = self.left() // (2 * max(1, workers))
        size = max(self.min_piece, min(self.max_piece, share))
        stop = min(end, start + size)
        if end - stop < self.min_piece:  # never leave a sliver behind
            stop = end
        if stop == end:
            self.todo.pop(0)
        else:
            self.todo[0] = (stop, end)
        return (start, stop)

    def give_back(self, start: int, end: int) -> None:
        """A connection failed or stopped: its unfinished range is up for grabs again."""
        if end > start:
            insort(self.todo, (start, end))
