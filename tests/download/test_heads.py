"""Response heads fuzzed (hypothesis): h11 accepts a head or the exchange raises an httpx error.

Nothing a server sends may raise anything else, loop, or take more than the head limit:
read blocking on a connection's thread (``wire._exchange``) or non-blocking on a TLS
thread (``steps.Exchanging``).
"""

from __future__ import annotations

import selectors
import ssl
from types import SimpleNamespace

import h11
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sa1b_cli.download.heads import Head, request_bytes
from sa1b_cli.download.steps import Exchanging
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


class NonBlocking(Scripted):
    """The same peer behind a non-blocking TLS socket: every other read finds nothing yet,
    and the first send must wait."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data, step)
        self.ready = False
        self.waiting = False  # told "no data yet": set until the selector would wake us
        self.sent = b""

    def gettimeout(self) -> float:
        return 0.0

    def send(self, data: bytes) -> int:
        if not self.sent:
            self.sent = b"waited"
            raise ssl.SSLWantWriteError
        return len(data)

    def recv(self, size: int) -> bytes:
        assert not self.waiting, "read again without waiting for the socket"
        self.ready = not self.ready
        if not self.ready:
            self.waiting = True
            raise ssl.SSLWantReadError
        view = memoryview(bytearray(size))
        return bytes(view[: self.recv_into(view, wait_all=False)])


def peer(data: bytes, step: int, *, tls: bool) -> Scripted:
    return NonBlocking(data, step) if tls else Scripted(data, step)


def read_head(conn: Scripted) -> Head:
    """The head an exchange reads from ``conn``: blocking, on a connection's thread, or
    non-blocking, as a TLS thread runs it (from a ``NonBlocking`` peer)."""
    request = h11.Request(method="GET", target="/a.tar?x", headers=[("Host", "cdn")])
    if isinstance(conn, NonBlocking):
        return exchange_on_a_tls_thread(conn, request)
    return _exchange(conn, request, b"", 5.0)  # type: ignore[arg-type]


def exchange_on_a_tls_thread(sock: NonBlocking, request: h11.Request) -> Head:
    """Run ``steps.Exchanging`` as a TLS thread would: advance while it waits on the socket."""
    parser, out = request_bytes(request, b"")
    conn = SimpleNamespace(sock=sock)
    exchange = Exchanging(conn, out, parser, b"GET", deadline=0.0)  # type: ignore[arg-type]
    for _ in range(2 * len(sock.data) + 4):  # a wait per read at most, and one to send
        if not (events := exchange.advance()):
            return exchange.result()
        assert events in (selectors.EVENT_READ, selectors.EVENT_WRITE)
        sock.waiting = False  # the selector says the socket is ready
    pytest.fail("the exchange went on past every byte the peer had")


@pytest.mark.parametrize("tls", [False, True], ids=["thread", "tls-thread"])
@settings(max_examples=400, deadline=None)
@given(HEADS, st.integers(min_value=1, max_value=64))
def test_any_head_is_accepted_by_h11_or_refused_as_an_http_error(tls, data, step):
    conn = peer(data, step, tls=tls)
    try:
        head = read_head(conn)
    except httpx.HTTPError:
        return
    assert 200 <= head.status <= 999
    assert head.length is None or head.length >= 0
    assert conn.read <= MAX_HEAD + 1


@pytest.mark.parametrize("tls", [False, True], ids=["thread", "tls-thread"])
def test_a_head_past_the_limit_is_refused_even_when_it_arrives_whole(tls):
    conn = peer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n", 16 << 10, tls=tls)
    with pytest.raises(httpx.RemoteProtocolError, match=r"64 KiB|malformed"):
        read_head(conn)
    assert conn.read <= MAX_HEAD + 1


@pytest.mark.parametrize("tls", [False, True], ids=["thread", "tls-thread"])
def test_a_switch_of_protocols_never_asked_for_is_refused_in_words(tls):
    conn = peer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", 64, tls=tls)
    with pytest.raises(httpx.RemoteProtocolError) as raised:
        read_head(conn)
    assert (
        str(raised.value) == "the server switched protocols (HTTP 101), which was never asked for"
    )
