"""Byte-range bookkeeping and piece planning (pure)."""

from __future__ import annotations

import itertools

from sa1b_cli.download.pieces import Pieces
from sa1b_cli.download.spans import SpanSet


def test_spans_merge_and_report_gaps():
    spans = SpanSet([(10, 20), (0, 5), (5, 10), (30, 40)])
    assert list(spans) == [(0, 20), (30, 40)]
    assert spans.prefix() == 20 and spans.total() == 30
    assert list(spans.missing(50)) == [(20, 30), (40, 50)]
    assert spans.covers(31, 35) and not spans.covers(19, 21)
    spans.add(15, 35)
    assert list(spans) == [(0, 40)]
    assert SpanSet([(5, 9)]).prefix() == 0
    assert list(SpanSet([(0, 100)]).clipped(60)) == [(0, 60)]


def test_pieces_go_lowest_first_and_shrink_toward_the_end():
    pieces = Pieces(SpanSet([(0, 100)]), 1100, min_piece=50, max_piece=400)
    taken = []
    while (piece := pieces.take(workers=2)) is not None:
        taken.append(piece)
    assert taken[0][0] == 100 and taken[-1][1] == 1100
    assert all(a[1] == b[0] for a, b in itertools.pairwise(taken))  # no gap, no overlap
    sizes = [end - start for start, end in taken]
    assert sizes == sorted(sizes, reverse=True) or sizes[-1] >= 50
    assert all(size >= 50 for size in sizes)


def test_a_piece_given_back_is_taken_again_first():
    pieces = Pieces(SpanSet(), 1000, min_piece=100, max_piece=100)
    first = pieces.take(1)
    second = pieces.take(1)
    assert first == (0, 100) and second == (100, 200)
    pieces.give_back(40, 100)
    assert pieces.take(1) == (40, 100)
