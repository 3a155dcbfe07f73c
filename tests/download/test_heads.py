"""Response heads fuzzed (hypothesis): h11 accepts a head or the exchange raises an httpx error.

Nothing a server sends may raise anything else, loop, or take more than the head limit.
"""

from __future__ import annotations

import h11
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sa1b_cli.download.wire import MAX_HEAD, _exchange


class Scripted:
    """A connection whose peer sends ``data`` in pieces of ``step`` bytes, then closes."""

    closed = False

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.read = data, step, 0

    def sendall(self, data: bytes) -> None:
        pass

    def recv_into(self, view: memoryview, *, wait_all: bool) -> int:
        piece = self.data[self.read : self.read + min(self.step, len(view))]
        view[: len(piece)] = piece
        self.read += len(piece)
        return len(piece)


PARTS = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 206 Partial Content\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n",
        b"Content-Length: 10\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Connection: close\r\n",
        b" folded\r\n",
        b"\r\n",
        b"0123456789",
    ]
)
HEADS = st.lists(st.one_of(PARTS, st.binary(max_size=40)), max_size=30).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(HEADS, st.integers(min_value=1, max_value=64))
def test_any_head_is_accepted_by_h11_or_refused_as_an_http_error(data, step):
    conn = Scripted(data, step)
    request = h11.Request(method="GET", target="/a.tar?x", headers=[("Host", "cdn")])
    try:
        head = _exchange(conn, request, b"", 5.0)  # type: ignore[arg-type]
    except httpx.HTTPError:
        return
    assert 200 <= head.status <= 999
    assert head.length is None or head.length >= 0
    assert conn.read <= MAX_HEAD + 1 + len(head.leftover) + 64


def test_a_head_past_the_limit_is_refused_even_when_it_arrives_whole():
    data = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    conn = Scripted(data, 16 << 10)
    request = h11.Request(method="GET", target="/", headers=[("Host", "cdn")])
    with pytest.raises(httpx.RemoteProtocolError, match=r"64 KiB|malformed"):
        _exchange(conn, request, b"", 5.0)  # type: ignore[arg-type]
