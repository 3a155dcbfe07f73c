"""A TLS connection's steps on the TLS threads (``steps``): connect, handshake, request, head.

Against real TLS servers on 127.0.0.1: each step ends in its result or an httpx error, at
its deadline at the latest, and a TLS connection never starts a thread of its own.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from typing import Any

import httpx
import pytest

from sa1b_cli.download.conn import Connection
from sa1b_cli.download.heads import MAX_HEAD
from sa1b_cli.download.steps import Opening
from sa1b_cli.download.wire import BODY_EXTENSION, WireTransport
from tests.servers import requests, serve_tls

BODY = bytes(range(256)) * 4000


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async for _ in requests(reader):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
        await writer.drain()


class Sink:
    """Where the fast path writes a body (``conn.BlockSink``)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.file = self

    def room(self) -> int:
        return 1 << 30

    def write(self, view: memoryview) -> None:
        self.data += view

    def landed(self, error: OSError | None) -> None:
        pass


async def read_body(client: httpx.AsyncClient, url: str) -> tuple[bytes, Connection]:
    """The body through the fast path (read_through), and the connection it came on."""
    sink = Sink()
    async with client.stream("GET", url) as r:
        body = r.extensions[BODY_EXTENSION]
        while await body.read_through(1 << 20, sink):
            pass
        return bytes(sink.data), body.conn


async def test_tls_connections_open_and_exchange_with_no_thread_of_their_own(certificate):
    srv, url, trusted = await serve_tls(certificate, answer)
    before = threading.active_count()
    try:
        async with httpx.AsyncClient(transport=WireTransport(ssl_context=trusted)) as client:
            got = await asyncio.gather(*(read_body(client, url) for _ in range(8)))
            during = threading.active_count()
    finally:
        srv.close()
    assert all(data == BODY for data, _ in got)
    assert len({id(conn) for _, conn in got}) == 8  # eight connections at once...
    assert all(conn.ident is None for _, conn in got)  # ...none with a thread
    assert during - before <= 2 + 6  # the TLS threads, and the resolver's pool at most


async def test_an_opening_tries_the_next_address_when_one_fails(certificate):
    srv, _, trusted = await serve_tls(certificate, answer)
    port = srv.sockets[0].getsockname()[1]
    with socket.socket() as closed:  # bound, never listening: refused
        closed.bind(("127.0.0.1", 0))
        refused = (socket.AF_INET, socket.SOCK_STREAM, 6, "", closed.getsockname())
        no_family = (255, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))  # socket() fails
        good = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))
        transport = WireTransport(ssl_context=trusted)
        conn = Connection(("https", "127.0.0.1", port))
        addresses = [refused, no_family, good]
        step = Opening(conn, addresses, "127.0.0.1", trusted, None, time.monotonic() + 10)
        try:
            await asyncio.wait_for(transport.reactors[0].run(conn, step), 10)
            assert isinstance(conn.sock, ssl.SSLSocket) and conn.sock.getpeername()[1] == port
            other = Connection(conn.key)
            step = Opening(other, [refused], "127.0.0.1", trusted, None, time.monotonic() + 10)
            with pytest.raises(ConnectionRefusedError):  # each refuses: the last error
                await asyncio.wait_for(transport.reactors[0].run(other, step), 10)
        finally:
            conn.close()
            await transport.aclose()
            srv.close()


async def test_a_server_that_never_shakes_hands_is_a_connect_timeout_at_its_deadline():
    ended = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the client hello, never answered, until the client goes
        writer.close()
        await writer.wait_closed()
        ended.set()

    srv = await asyncio.start_server(mute, "127.0.0.1", 0)
    url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}/t"
    started = time.monotonic()
    try:
        timeout = httpx.Timeout(5.0, connect=0.5)
        async with httpx.AsyncClient(transport=WireTransport(), timeout=timeout) as client:
            with pytest.raises(httpx.ConnectTimeout, match=r"127\.0\.0\.1"):
                await client.get(url)
        await asyncio.wait_for(ended.wait(), 2)  # and the connection was closed
    finally:
        srv.close()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("head", "error", "says"),
    [
        (None, httpx.ReadTimeout, "no whole response head"),  # the handshake, then silence
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD,
            httpx.RemoteProtocolError,
            "64 KiB|malformed",
        ),
        (b"HTTP/1.1 abc OK\r\n\r\n", httpx.RemoteProtocolError, "malformed HTTP response"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * 20, httpx.RemoteProtocolError, "interim"),
        (b"HTTP/1.1 200 OK\r\nContent-", httpx.RemoteProtocolError, "before a whole response"),
    ],
    ids=["silence", "huge", "malformed", "interim-flood", "cut"],
)
async def test_a_bad_head_over_tls_fails_its_exchange_alone(certificate, head, error, says):
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if head is not None:
            await reader.readuntil(b"\r\n\r\n")
            for k in range(0, len(head), 5000):  # many records
                writer.write(head[k : k + 5000])
                await writer.drain()
            writer.close()
            return
        await reader.read()  # silence, until the client goes

    srv, url, trusted = await serve_tls(certificate, respond)
    good_srv, good_url, _ = await serve_tls(certificate, answer)
    started = time.monotonic()
    try:
        timeout = httpx.Timeout(1.0)
        transport = WireTransport(ssl_context=trusted)
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            with pytest.raises(error, match=says):
                await client.get(url)
            assert (await read_body(client, good_url))[0] == BODY  # the transport goes on
    finally:
        srv.close()
        good_srv.close()
    assert time.monotonic() - started < 5
    assert all(reactor.calls() == 0 for reactor in transport.reactors)


async def test_a_cancelled_opening_closes_its_connection_at_once(certificate):
    ended = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1 << 16):  # the client hello, then the end
            pass
        writer.close()
        await writer.wait_closed()
        ended.set()

    srv = await asyncio.start_server(mute, "127.0.0.1", 0)
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}/t"
    transport = WireTransport(ssl_context=trusted)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            task = asyncio.create_task(client.get(url))
            await asyncio.sleep(0.3)  # connected, the handshake waiting on the server
            assert not ended.is_set()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(ended.wait(), 2)  # closed by the TLS thread, within POLL
    finally:
        srv.close()
    assert all(reactor.calls() == 0 for reactor in transport.reactors)


async def test_addresses_are_taken_as_they_stand_or_resolved_once_a_while(monkeypatch):
    looked_up: list[str] = []
    resolve = asyncio.get_running_loop().getaddrinfo

    async def counted(host: str, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        return await resolve(host, *args, **kwargs)

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", counted)
    transport = WireTransport()
    v4, v6 = await transport._addresses("127.0.0.1", 443), await transport._addresses("::1", 443)
    assert [(a[0], a[4]) for a in v4 + v6] == [
        (socket.AF_INET, ("127.0.0.1", 443)),
        (socket.AF_INET6, ("::1", 443)),
    ]
    for _ in range(3):
        named = await transport._addresses("localhost", 443)
        assert named and all(a[4][1] == 443 for a in named)
    assert looked_up == ["localhost"]  # once: kept for RESOLVED_FOR seconds
    monkeypatch.setattr("sa1b_cli.download.wire.RESOLVED_FOR", 0.0)
    transport.resolved.clear()
    await transport._addresses("localhost", 443)
    await transport._addresses("localhost", 443)
    assert looked_up == ["localhost"] * 3  # and looked up again once that passed
    await transport.aclose()
