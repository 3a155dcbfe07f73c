"""Which byte ranges of a shard the next connection should fetch (pure, no I/O).

Pieces are handed out lowest offset first, so every connection works close to the digest
frontier (the reorder window stays a few pieces wide). A piece is the smaller of a share
of the work left (guided self-scheduling: pieces shrink toward the end, so every
connection stays busy until the last byte) and what one connection carries in about two
seconds at the measured rate (a capped connection must not sit on a long piece alone).
In the tail an idle connection takes half of the piece with the most left, if each half
still carries a useful fraction of a second.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass

from sa1b_cli.download.spans import Span, SpanSet

__all__ = ["Piece", "Pieces"]

SECONDS_PER_PIECE = 2.0
UNMEASURED_PIECE = 8 << 20  # before the first measurement, a piece any link carries quickly
# In the tail, a split must leave each half this much time at the measured rate: the new
# request costs a round trip, so a split pays while the round trip is shorter than this.
TAIL_SECONDS = 0.125


@dataclass(eq=False, slots=True)
class Piece:
    """One connection's range: ``pos`` moves as bytes land, ``end`` shrinks when split."""

    pos: int
    end: int

    @property
    def left(self) -> int:
        return self.end - self.pos


class Pieces:
    """The unassigned ranges of one file, and the ones connections are working on."""

    def __init__(self, have: SpanSet, size: int, *, min_piece: int, max_piece: int) -> None:
        self.todo: list[Span] = list(have.missing(size))
        self.active: set[Piece] = set()
        self.min_piece = min_piece
        self.max_piece = max_piece

    def left(self) -> int:
        return sum(end - start for start, end in self.todo)

    def __bool__(self) -> bool:
        """Whether some range is not handed out yet."""
        return bool(self.todo)

    def take(self, workers: int, per_connection: float | None = None) -> Piece | None:
        """The next piece for one of ``workers`` connections; in the tail, half of another's.

        ``per_connection`` is the measured bytes per second of one connection, if known.
        """
        if not self.todo:
            return self._split(per_connection)
        start, end = self.todo[0]
        share = self.left() // (2 * max(1, workers))
        rate_cap = UNMEASURED_PIECE if per_connection is None else per_connection
        share = min(share, int(rate_cap * SECONDS_PER_PIECE))
        size = max(self.min_piece, min(self.max_piece, share))
        stop = min(end, start + size)
        if end - stop < self.min_piece:  # never leave a sliver behind
            stop = end
        if stop == end:
            self.todo.pop(0)
        else:
            self.todo[0] = (stop, end)
        return self._start(start, stop)

    def _start(self, start: int, end: int) -> Piece:
        piece = Piece(start, end)
        self.active.add(piece)
        return piece

    def _split(self, per_connection: float | None = None) -> Piece | None:
        """The tail: take the second half of the piece with the most left (work stealing).

        Its connection stops at the new end; without this, the last pieces of a file run
        on a few capped connections while the others idle. Each half must be worth
        TAIL_SECONDS at the measured rate, and a quarter of ``min_piece``: splits are few,
        so the per-request floor can be lower here than for a whole piece.
        """
        biggest = max(self.active, key=lambda p: p.left, default=None)
        if biggest is None:
            return None
        half = self.min_piece
        if per_connection is not None:
            half = max(self.min_piece // 4, int(per_connection * TAIL_SECONDS))
        if biggest.left < 2 * half:
            return None
        middle = biggest.pos + biggest.left // 2
        new = self._start(middle, biggest.end)
        biggest.end = middle
        return new

    def finished(self, piece: Piece) -> None:
        self.active.discard(piece)

    def give_back(self, piece: Piece) -> None:
        """A connection failed or stopped: its unfinished range is up for grabs again."""
        self.active.discard(piece)
        if piece.end > piece.pos:
            insort(self.todo, (piece.pos, piece.end))
