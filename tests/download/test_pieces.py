"""Byte-range bookkeeping and piece planning (pure)."""

from __future__ import annotations

import itertools

from sa1b_cli.download.plan import Pieces, SpanSet


def test_spans_merge_and_report_gaps():
    spans = SpanSet([(10, 20), (0, 5), (5, 10), (30, 40)])
    assert list(spans) == [(0, 20), (30, 40)]
    assert spans.prefix() == 20 and spans.total() == 30
    assert list(spans.missing(50)) == [(20, 30), (40, 50)]
    assert spans.covers(31, 35) and not spans.covers(19, 21)
    assert spans.run_end(5) == 20 and spans.run_end(25) == 25 and spans.run_end(39) == 40
    spans.add(15, 35)
    assert list(spans) == [(0, 40)]
    assert SpanSet([(5, 9)]).prefix() == 0
    assert list(SpanSet([(0, 100)]).clipped(60)) == [(0, 60)]


def test_pieces_go_lowest_first_and_shrink_toward_the_end():
    pieces = Pieces(SpanSet([(0, 100)]), 1100, min_piece=50, max_piece=400)
    taken = []
    while pieces:
        piece = pieces.take(workers=2, per_connection=10_000.0)
        assert piece is not None
        taken.append((piece.pos, piece.end))
        pieces.finished(piece)
    assert taken[0][0] == 100 and taken[-1][1] == 1100
    assert all(a[1] == b[0] for a, b in itertools.pairwise(taken))  # no gap, no overlap
    sizes = [end - start for start, end in taken]
    assert sizes[0] == max(sizes) > sizes[-1] and all(size >= 50 for size in sizes)


def test_a_piece_is_what_one_connection_carries_in_about_a_second():
    pieces = Pieces(SpanSet(), 10_000_000, min_piece=1000, max_piece=10**9)
    first = pieces.take(workers=1, per_connection=250_000.0)
    assert first is not None and first.left == 500_000  # two seconds of it


def test_a_piece_given_back_is_taken_again_first():
    pieces = Pieces(SpanSet(), 1000, min_piece=100, max_piece=100)
    first = pieces.take(1)
    second = pieces.take(1)
    assert first is not None and second is not None
    assert (first.pos, first.end, second.pos, second.end) == (0, 100, 100, 200)
    first.pos = 40
    pieces.give_back(first)
    again = pieces.take(1)
    assert again is not None and (again.pos, again.end) == (40, 100)


def test_in_the_tail_an_idle_connection_takes_half_of_the_biggest_piece():
    pieces = Pieces(SpanSet([(0, 1000)]), 1000, min_piece=100, max_piece=1000)
    assert not pieces and pieces.take(1) is None  # nothing to hand out, nobody to help
    slow = pieces._start(0, 1000)  # one connection holds the whole file
    slow.pos = 200
    assert pieces.splittable()  # so a free slot may open one more connection for it
    helper = pieces.take(2)
    assert helper is not None and (helper.pos, helper.end) == (600, 1000)
    assert slow.end == 600  # its connection stops there
    slow.pos, helper.pos = 450, 850
    assert not pieces.splittable()
    assert pieces.take(3) is None  # 150 bytes left in each: not worth a split


def test_nothing_is_split_while_a_range_is_still_to_hand_out():
    pieces = Pieces(SpanSet(), 1000, min_piece=100, max_piece=400)
    first = pieces.take(1)
    assert first is not None and pieces and not pieces.splittable()


def test_a_tail_split_leaves_each_half_an_eighth_of_a_second_at_the_measured_rate():
    mib = 1 << 20
    pieces = Pieces(SpanSet([(0, 64 * mib)]), 64 * mib, min_piece=4 * mib, max_piece=64 * mib)
    slow = pieces._start(0, 6 * mib)  # the last 6 MiB, on one connection
    assert pieces.take(2) is None  # unmeasured: halves of at least min_piece
    assert pieces.take(2, per_connection=64.0 * mib) is None  # 3 MiB halves: 47 ms each
    helper = pieces.take(2, per_connection=8.0 * mib)  # at 8 MiB/s, 0.375 s each
    assert helper is not None and (helper.pos, helper.end) == (3 * mib, 6 * mib)
    slow.pos = int(2.5 * mib)  # 0.5 MiB left here, 3 MiB there
    assert pieces.take(3, per_connection=1.0 * mib) is not None  # 1.5 MiB halves
    assert pieces.take(4, per_connection=1.0 * mib) is None  # 0.75 MiB halves: below 1 MiB
