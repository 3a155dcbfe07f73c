"""Plan: what the selection needs, what is durable, what is missing, and the pieces.

Pure data and functions over the manifest, the store's records and byte ranges (no
network): which shards are complete or missing, the byte ranges a record vouches for, the
digests each shard is checked against on arrival, whether the bytes still to fetch fit on
the disk, and how a shard's missing ranges are cut into the pieces connections fetch.

Byte ranges: a span is ``(start, end)`` with ``end`` exclusive; a ``SpanSet`` keeps
disjoint, sorted, merged spans, so "what is still missing" and "how far is the file whole
from byte 0" are one call each.

Pieces are handed out lowest offset first, so every connection works close to the digest
frontier (the reorder window stays a few pieces wide). A piece is the smaller of a share
of the work left (guided self-scheduling: pieces shrink toward the end, so every
connection stays busy until the last byte) and what one connection carries in about two
seconds at the measured rate (a capped connection must not sit on a long piece alone).
In the tail an idle connection takes half of the piece with the most left, if each half
still carries a useful fraction of a second.
"""

from __future__ import annotations

import shutil
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sa1b_cli.core.checksums import ChecksumList
from sa1b_cli.core.config import SPACE_MARGIN
from sa1b_cli.core.errors import NotEnoughSpaceError
from sa1b_cli.core.manifest import Manifest, ManifestRow, object_path
from sa1b_cli.core.results import ShardResult
from sa1b_cli.core.store import Record, Store
from sa1b_cli.download.config import DownloadConfig

__all__ = [
    "Expected",
    "Piece",
    "Pieces",
    "Plan",
    "Span",
    "SpanSet",
    "already_complete",
    "check_space",
    "interrupted",
    "kept_spans",
    "plan",
    "records",
    "same_object",
]


@dataclass(frozen=True, slots=True)
class Plan:
    names: list[str]  # the selection, in report order
    pending: list[ManifestRow]  # still to fetch
    settled: list[ShardResult]  # already complete, or not in the manifest


def plan(manifest: Manifest, config: DownloadConfig, store: Store) -> Plan:
    names = config.selection.apply(manifest.rows)
    pending: list[ManifestRow] = []
    settled: list[ShardResult] = []
    for name in names:
        row = manifest.rows.get(name)
        if row is None:
            settled.append(ShardResult(name, "no_link", detail="the manifest has no row for it"))
        elif (done := already_complete(store, row)) is not None:
            settled.append(done)
        else:
            pending.append(row)
    return Plan(names, pending, settled)


def already_complete(store: Store, row: ManifestRow) -> ShardResult | None:
    record = store.read(row.file_name)
    try:
        final_size: int | None = store.final_path(row.file_name).stat().st_size
    except FileNotFoundError:
        final_size = None
    if record is None or record.size is None or not record.is_done(final_size):
        return None
    if record.tar_deleted:  # extracted with --delete-tar: done, not to be fetched again
        return ShardResult(row.file_name, "present", size=record.size, detail="tar deleted")
    return ShardResult(
        row.file_name,
        "present",
        bytes_done=record.size,
        size=record.size,
        digests=tuple(sorted(record.digests.items())),
    )


def same_object(store: Store, row: ManifestRow) -> Record | None:
    record = store.read(row.file_name)
    return record if record and record.object_path == object_path(row.url) else None


def records(store: Store, rows: list[ManifestRow]) -> dict[str, Record | None]:
    """Each pending row's record, when it is about the same object (read once per run)."""
    return {row.file_name: same_object(store, row) for row in rows}


def check_space(store: Store, found: dict[str, Record | None], sizes: dict[str, int | None]) -> int:
    """Bytes still to fetch; raises NotEnoughSpaceError when they cannot fit.

    A shard that alone needs more than is free is left out while others fit: it fails on
    its own (``NoRoom``), as a server that says 900 TiB must not stop the run.
    """
    free = shutil.disk_usage(store.tars).free
    missing = [max(0, (sizes.get(n) or 0) - kept_spans(r).total()) for n, r in found.items()]
    fitting = [m for m in missing if m <= free]
    needed = sum(fitting if fitting else missing)
    margin = min(SPACE_MARGIN, needed // 50)  # records, indexes, filesystem slack
    if needed + margin > free:
        msg = (
            f"the selected shards need {needed / 2**30:,.1f} GiB more, "
            f"but {store.tars} has {free / 2**30:,.1f} GiB free"
        )
        hint = "Free space, pick a smaller --subset, or use --root on a bigger disk."
        raise NotEnoughSpaceError(msg, hint=hint)
    return needed


@dataclass(frozen=True, slots=True)
class Expected:
    """Digests checked on arrival: --checksums lists, and the community md5s with --known."""

    lists: ChecksumList
    community: dict[str, str]

    def of(self, name: str) -> tuple[dict[str, str], dict[str, str]]:
        """(alg -> digest, alg -> where it came from); the community md5 wins over a list's."""
        expected = dict(self.lists.expected(name))
        sources = dict.fromkeys(expected, "list")
        if md5 := self.community.get(name):
            expected["md5"], sources["md5"] = md5, "community"
        return expected, sources


def interrupted(store: Store, row: ManifestRow, fetched: int) -> ShardResult:
    """A shard the run stopped before it ended: what it kept, and what to do next."""
    kept = kept_spans(same_object(store, row)).total()
    if kept:
        detail = "interrupted; partial bytes kept, run the same command to continue"
    elif fetched:
        detail = "interrupted before its first checkpoint; run the same command to fetch it"
    else:
        detail = "not started; run the same command to fetch it"
    return ShardResult(
        row.file_name, "interrupted", bytes_done=kept, bytes_fetched=fetched, detail=detail
    )


# -- byte ranges --------------------------------------------------------------------------

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


def kept_spans(record: Record | None) -> SpanSet:
    """The durable byte ranges a record vouches for (older records name only a prefix)."""
    if record is None:
        return SpanSet()
    if record.spans is not None:
        return SpanSet((start, end) for start, end in record.spans)
    return SpanSet([(0, record.durable_bytes)])


# -- pieces ---------------------------------------------------------------------------------

SECONDS_PER_PIECE = 2.0
UNMEASURED_PIECE = 8 << 20  # before the first measurement, a piece any link carries quickly
# In the tail, a split must leave each half this much time at the measured rate: the new
# request costs a round trip, so a split pays while the round trip is shorter than this.
TAIL_SECONDS = 0.125


@dataclass(eq=False, slots=True)
class Piece:
    """One connection's range: ``pos`` moves as bytes land, ``end`` shrinks when split.

    The receiving thread moves ``pos`` after each write, and reads ``end`` before each
    receive; both only ever move toward each other.
    """

    pos: int
    end: int

    @property
    def left(self) -> int:
        return self.end - self.pos

    def reached(self, pos: int) -> None:
        """Bytes before ``pos`` are here: a split of this piece may only start past it."""
        self.pos = min(self.end, max(self.pos, pos))


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

    def splittable(self, per_connection: float | None = None) -> bool:
        """Whether ``take`` would split a piece now (every range is handed out)."""
        return not self.todo and self._to_split(per_connection) is not None

    def _to_split(self, per_connection: float | None) -> Piece | None:
        """The piece with the most left, if each half of it is worth a request.

        Each half must be worth TAIL_SECONDS at the measured rate, and a quarter of
        ``min_piece``: splits are few, so the per-request floor can be lower here than for
        a whole piece.
        """
        biggest = max(self.active, key=lambda p: p.left, default=None)
        half = self.min_piece
        if per_connection is not None:
            half = max(self.min_piece // 4, int(per_connection * TAIL_SECONDS))
        return biggest if biggest is not None and biggest.left >= 2 * half else None

    def _split(self, per_connection: float | None = None) -> Piece | None:
        """The tail: take the second half of the piece with the most left (work stealing).

        Its connection stops at the new end; without this, the last pieces of a file run
        on a few capped connections while the others idle.
        """
        biggest = self._to_split(per_connection)
        if biggest is None:
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
