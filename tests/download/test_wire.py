"""The wire transport against a real socket on 127.0.0.1: bodies, reuse, chunked, drops, stalls."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sa1b_cli.core.errors import UsageError
from sa1b_cli.download.conn import _Mailbox
from sa1b_cli.download.reactor import _record_reader
from sa1b_cli.download.wire import (
    BODY_EXTENSION,
    CHUNK_EXTENSION,
    BufferPool,
    WireTransport,
    make_transport,
)
from tests.servers import Serve, requests, serve_tls, start_server


@pytest.fixture
async def server() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(serve: Serve, tls: ssl.SSLContext | None = None) -> str:
        srv = await start_server(serve, tls)
        servers.append(srv)
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    yield start
    for srv in servers:
        srv.close()


BODY = bytes(range(256)) * 4000  # ~1 MiB, bigger than one receive buffer


def contexts(
    request: pytest.FixtureRequest, tls: bool
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(the server's, the client's) TLS contexts with a throwaway certificate; none for HTTP."""
    if not tls:
        return None, None
    cert, key = request.getfixturevalue("certificate")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    return served, ssl.create_default_context(cafile=str(cert))


async def test_bodies_arrive_whole_on_one_reused_connection(server):
    connections: list[int] = []
    targets: list[bytes] = []

    async def serve(reader, writer):
        connections.append(1)
        async for head in requests(reader):
            targets.append(head.split(b" ")[1])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
            await writer.drain()

    base = await server(serve)
    async with httpx.AsyncClient(transport=WireTransport()) as client:
        for _ in range(3):
            async with client.stream("GET", f"{base}/x.tar?_nc_gid&oh=00_a%2Fb&oe=1") as r:
                got = b"".join([bytes(c) async for c in r.aiter_raw()])
            assert r.status_code == 200 and got == BODY
    assert len(connections) == 1  # keep-alive
    assert targets == [b"/x.tar?_nc_gid&oh=00_a%2Fb&oe=1"] * 3  # byte for byte


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("after", ["hang-up", "stray bytes"])
async def test_an_idle_connection_the_server_closed_or_wrote_to_is_not_reused(
    server, request, tls, after
):
    """Each body is whole, on a new connection: a connection is checked when taken again."""
    connections: list[int] = []
    served, trusted = contexts(request, tls)

    async def serve(reader, writer):
        connections.append(1)
        async for _ in requests(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
            await writer.drain()
            await asyncio.sleep(0.1)  # after the body, in a record and a segment of their own
            if after == "hang-up":
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
            await writer.drain()

    base = await server(serve, tls=served)
    async with httpx.AsyncClient(transport=WireTransport(ssl_context=trusted)) as client:
        for _ in range(3):
            async with client.stream("GET", f"{base}/x") as r:
                got = b"".join([bytes(c) async for c in r.aiter_raw()])
            assert r.status_code == 200 and got == BODY
            await asyncio.sleep(0.3)  # the hang-up or the stray bytes are here by now
    assert len(connections) == 3


async def test_chunked_bodies_are_decoded(server):
    async def serve(reader, writer):
        async for _ in requests(reader):
            writer.write(b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"4\r\nURL \r\n11;ext=1\r\nsignature expired\r\n0\r\n\r\n")
            await writer.drain()

    base = await server(serve)
    async with httpx.AsyncClient(transport=WireTransport()) as client:
        for _ in range(2):
            response = await client.get(f"{base}/y")
            assert response.status_code == 403 and response.text == "URL signature expired"


async def test_a_drop_mid_body_is_a_transport_error(server):
    async def serve(reader, writer):
        async for _ in requests(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 5000)
            await writer.drain()
            return  # the connection closes with 95,000 bytes missing

    base = await server(serve)
    got: list[int] = []

    async def read_all(client: httpx.AsyncClient) -> None:
        async with client.stream("GET", f"{base}/z") as r:
            async for chunk in r.aiter_raw():
                got.append(len(chunk))

    async with httpx.AsyncClient(transport=WireTransport()) as client:
        with pytest.raises(httpx.TransportError):
            await read_all(client)
    assert sum(got) == 5000


async def test_a_silent_server_raises_read_timeout(server):
    async def serve(reader, writer):
        async for _ in requests(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            await asyncio.sleep(5)

    base = await server(serve)

    async def read_all(client: httpx.AsyncClient) -> None:
        async with client.stream("GET", f"{base}/slow") as r:
            async for _ in r.aiter_raw():
                pass

    async with httpx.AsyncClient(transport=WireTransport(), timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await read_all(client)


async def test_refused_connection_is_a_connect_error():
    async with httpx.AsyncClient(transport=WireTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/")


def test_a_proxy_in_the_environment_uses_httpx_s_own_transport(monkeypatch):
    assert isinstance(make_transport(), WireTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert make_transport() is None


async def tls_server(
    certificate: tuple[Path, Path], body: bytes
) -> tuple[asyncio.Server, str, ssl.SSLContext]:
    """A TLS server on 127.0.0.1 that answers every request with ``body``: as ``serve_tls``."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for _ in requests(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    return await serve_tls(certificate, respond)


async def test_https_bodies_arrive_whole(certificate: tuple[Path, Path]):
    srv, url, trusted = await tls_server(certificate, BODY)
    try:
        async with httpx.AsyncClient(transport=WireTransport(ssl_context=trusted)) as client:
            for _ in range(2):
                async with client.stream("GET", f"{url}?_nc_gid&oe=1") as r:
                    got = b"".join([bytes(c) async for c in r.aiter_raw()])
                assert r.status_code == 200 and got == BODY
            sink = Sink()  # the fast path over TLS: records, not one recv(MSG_WAITALL)
            async with client.stream("GET", url) as r:
                while await r.extensions[BODY_EXTENSION].read_through(1 << 20, sink):
                    pass
            assert bytes(sink.data) == BODY
    finally:
        srv.close()


async def test_tls_bodies_are_received_on_the_tls_threads_and_sessions_resume(certificate):
    body = bytes(range(256)) * 20_000  # ~5 MiB: many records, several calls
    srv, url, trusted = await tls_server(certificate, body)
    transport = WireTransport(ssl_context=trusted, receivers=2)  # one on a 1-core machine
    assert [reactor.used_cpu() for reactor in transport.reactors] == [0.0, 0.0]
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            sinks, responses = [Sink(), Sink()], []
            for _ in sinks:  # two open at once: two connections
                responses.append(await client.send(client.build_request("GET", url), stream=True))
            for sink, r in zip(sinks, responses, strict=True):
                while await r.extensions[BODY_EXTENSION].read_through(1 << 20, sink):
                    pass
                await r.aclose()
            reused = [r.extensions[BODY_EXTENSION].conn.sock.session_reused for r in responses]
    finally:
        srv.close()
    assert all(bytes(sink.data) == body for sink in sinks)
    # (bytes that came with the head are written on the loop, the rest on the TLS thread)
    assert {t for sink in sinks for t in sink.threads} <= {*TLS_THREADS, "MainThread"}
    assert all(sink.threads & TLS_THREADS for sink in sinks)
    assert len(sinks[0].landings) > 1  # the loop heard once per call, not once at the end
    assert reused == [False, True]  # the second connection resumed the first one's session
    assert transport.reactors[0].used_cpu() > 0  # what the connection controller reads


@pytest.mark.parametrize("one_file", [False, True])
async def test_tls_bodies_received_at_once_go_to_both_threads_unless_one_file(
    certificate, one_file
):
    """Each call goes to the thread with fewer calls under way: two bodies, two threads;
    but one file is written by one thread at a time (two would take its lock in turn)."""
    body = bytes(range(256)) * 20_000
    srv, url, trusted = await tls_server(certificate, body)
    transport = WireTransport(ssl_context=trusted, receivers=2)
    sinks = [Sink(), Sink()]
    if one_file:
        sinks[1].file = sinks[0]
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            responses = [
                await client.send(client.build_request("GET", url), stream=True) for _ in sinks
            ]
            bodies = [r.extensions[BODY_EXTENSION] for r in responses]
            await asyncio.gather(*map(read_all, bodies, sinks))
            for r in responses:
                await r.aclose()
    finally:
        srv.close()
    assert all(bytes(sink.data) == body for sink in sinks)
    used = {t for sink in sinks for t in sink.threads} - {"MainThread"}
    assert used == ({"sa1b-tls-0"} if one_file else TLS_THREADS)
    assert not any(reactor.files for reactor in transport.reactors)  # none kept past its call


async def test_a_silent_tls_body_raises_read_timeout_and_lands_once(certificate):
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    srv, url, trusted = await serve_tls(certificate, respond)
    sink = Sink()
    try:
        transport = WireTransport(ssl_context=trusted)
        async with (
            httpx.AsyncClient(transport=transport, timeout=1.5) as client,
            client.stream("GET", url) as r,
        ):
            with pytest.raises(httpx.ReadTimeout):
                await r.extensions[BODY_EXTENSION].read_through(1000, sink)
    finally:
        srv.close()
    assert sink.landings == [None] and not sink.data


@pytest.mark.parametrize("close_notify", [True, False])
async def test_a_tls_body_cut_short_is_a_transport_error_with_every_byte_before_it(
    certificate, close_notify
):
    """Closed mid-body, with TLS's close_notify or without it (a ragged end: a bare FIN),
    the thread writes what came, and the call fails short, never as a whole body."""
    sent = BODY * 3  # ~3 MiB of a declared 4 MiB: several records past the head

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 << 20) + sent)
        await writer.drain()
        for _ in range(1000):  # the end goes out only once every byte sent has come
            if len(sink.data) >= len(sent):
                break
            await asyncio.sleep(0.01)
        if not close_notify:
            writer.transport.get_extra_info("socket").shutdown(socket.SHUT_WR)
            await asyncio.sleep(5)

    srv, url, trusted = await serve_tls(certificate, respond)
    sink = Sink()
    try:
        transport = WireTransport(ssl_context=trusted)
        async with (
            httpx.AsyncClient(transport=transport, timeout=3) as client,
            client.stream("GET", url) as r,
        ):
            with pytest.raises(httpx.TransportError) as raised:
                await read_all(r.extensions[BODY_EXTENSION], sink)
    finally:
        srv.close()
    assert str(raised.value) == "the connection closed 1.1 MiB before the end"  # not a timeout
    assert bytes(sink.data) == sent
    assert sink.threads & TLS_THREADS


TLS_THREADS = {"sa1b-tls-0", "sa1b-tls-1"}


class Sink:
    """A BlockSink that keeps what the connection's thread wrote, and counts landings."""

    def __init__(self, fail_after: int | None = None, *, bug: bool = False) -> None:
        self.data = bytearray()
        self.bug = bug  # raise a RuntimeError, as a bug in the writing code would
        self.threads: set[str] = set()
        self.idents: set[int] = set()
        self.landings: list[OSError | None] = []
        self.fail_after = fail_after
        self.file = self  # each sink its own file
        self.limit = 1 << 40  # bytes it takes in all (a test lowers it, as a split would)

    def room(self) -> int:
        return self.limit - len(self.data)

    def write(self, view: memoryview) -> None:
        import threading

        self.threads.add(threading.current_thread().name)
        self.idents.add(threading.get_ident())
        if self.bug:
            raise RuntimeError("a bug in the sink")
        if self.fail_after is not None and len(self.data) >= self.fail_after:
            raise OSError(28, "No space left on device")
        self.data += view

    def landed(self, error: OSError | None) -> None:
        self.landings.append(error)


async def head_alone(writer: asyncio.StreamWriter, length: int) -> None:
    """A response head, then a pause: no body bytes are read with it (the loop's path)."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
    await writer.drain()
    await asyncio.sleep(0.05)


async def test_read_through_writes_on_the_connection_thread_and_lands_once_per_call(server):
    async def serve(reader, writer):
        async for _ in requests(reader):
            await head_alone(writer, len(BODY))
            for i in range(0, len(BODY), 100_000):  # in bursts, as a far CDN sends
                writer.write(BODY[i : i + 100_000])
                await writer.drain()
                await asyncio.sleep(0.001)

    base = await server(serve)
    async with (
        httpx.AsyncClient(transport=WireTransport()) as client,
        client.stream("GET", f"{base}/x", extensions={CHUNK_EXTENSION: 65536}) as r,
    ):
        body = r.extensions[BODY_EXTENSION]
        got, calls, idents = bytearray(), 0, set()
        while True:
            sink = Sink()
            n = await body.read_through(300_000, sink)
            assert sink.landings == [None]  # exactly once, before the call returns
            calls += 1
            if n == 0:
                break
            assert n == len(sink.data) <= 300_000
            got += sink.data
            idents |= sink.idents
    # (bytes that came with the head, if any, are written on the loop, the rest on the
    # connection's thread)
    assert body.conn.ident in idents <= {threading.get_ident(), body.conn.ident}
    assert bytes(got) == BODY
    assert calls >= 4  # never more than asked for in one call


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("end", ["whole", "cut after the head's bytes"])
async def test_bytes_that_came_with_the_head_go_in_the_first_call_s_buffer_over_tls(
    server, request, tls, end
):
    """Over TLS, one call and one landing for them and the bytes after them, off the loop;
    over plain HTTP, a call of their own on the loop. A body that ends with them is short
    on the next call, with every byte before the cut written."""
    served, trusted = contexts(request, tls)
    early = BODY[:5000]

    async def serve(reader, writer):
        async for _ in requests(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + early)
            await writer.drain()
            await asyncio.sleep(0.3)  # the head's read holds the early bytes alone
            if end == "whole":
                writer.write(BODY[len(early) :])
                await writer.drain()
            else:
                return

    base = await server(serve, tls=served)
    sink = Sink()
    async with (
        httpx.AsyncClient(transport=WireTransport(ssl_context=trusted)) as client,
        client.stream("GET", f"{base}/x", extensions={CHUNK_EXTENSION: 65536}) as r,
    ):
        body = r.extensions[BODY_EXTENSION]
        k = len(body.leftover)  # (more than ``early`` only on a machine too slow to read it)
        assert k and bytes(body.leftover) == BODY[:k]
        n = await body.read_through(300_000, sink)
        assert sink.landings == [None] and (MAIN in sink.threads) is not tls
        if end == "whole":
            assert (k <= n if tls else k == n) and n == len(sink.data)  # (a turn is 50 ms)
            await read_all(body, sink)
            assert bytes(sink.data) == BODY
        else:
            assert n == k == len(early) and bytes(sink.data) == early
            with pytest.raises(httpx.RemoteProtocolError, match="before the end"):
                await body.read_through(300_000, sink)


MAIN = threading.main_thread().name


async def test_read_through_cancelled_mid_body_still_lands_what_was_written(server):
    async def serve(reader, writer):
        async for _ in requests(reader):
            await head_alone(writer, len(BODY))
            writer.write(BODY[:70_000])
            await writer.drain()
            await asyncio.sleep(5)  # then silence: the reader is cancelled meanwhile

    base = await server(serve)
    sink = Sink()
    async with (
        httpx.AsyncClient(transport=WireTransport()) as client,
        client.stream("GET", f"{base}/x") as r,
    ):
        body = r.extensions[BODY_EXTENSION]
        while body.leftover:  # bytes that came with the head: written on the loop
            await body.read_through(len(BODY), sink)
        call = asyncio.ensure_future(body.read_through(len(BODY), sink))
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(250):  # the thread returns once the closed socket wakes it
            if sink.landings:
                break
            await asyncio.sleep(0.02)
    assert sink.landings and set(sink.landings) == {None}
    assert bytes(sink.data) == BODY[: len(sink.data)]


async def test_read_through_raises_the_disk_s_error_itself(server):
    async def serve(reader, writer):
        async for _ in requests(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
            await writer.drain()

    base = await server(serve)
    sink = Sink(fail_after=0)
    async with (
        httpx.AsyncClient(transport=WireTransport()) as client,
        client.stream("GET", f"{base}/x") as r,
    ):
        with pytest.raises(OSError, match="No space") as raised:
            await r.extensions[BODY_EXTENSION].read_through(len(BODY), sink)
    assert not isinstance(raised.value, httpx.TransportError)  # not mistaken for the network
    assert len(sink.landings) == 1 and isinstance(sink.landings[0], OSError)


@pytest.mark.parametrize(
    "path", ["with the head", "with the head, over TLS", "connection thread", "TLS thread"]
)
async def test_a_bug_while_writing_fails_its_call_and_still_lands(server, certificate, path):
    """Never a wait without end: the part file waits for every block to land.

    Bytes that came with the head are written on the loop over plain HTTP, and over TLS
    first in the TLS thread's buffer.
    """

    async def serve(reader, writer):
        async for _ in requests(reader):
            if path.startswith("with the head"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
            else:
                await head_alone(writer, len(BODY))
                writer.write(BODY)
            await writer.drain()

    transport, served = WireTransport(), None
    if "TLS" in path:
        served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        served.load_cert_chain(*certificate)
        trusted = ssl.create_default_context(cafile=str(certificate[0]))
        transport = WireTransport(ssl_context=trusted)
    base = await server(serve, served)
    sink, after = Sink(bug=True), Sink()
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", f"{base}/x") as r:
            body = r.extensions[BODY_EXTENSION]
            with pytest.raises(RuntimeError, match="a bug in the sink"):
                await asyncio.wait_for(body.read_through(len(BODY), sink), 10)
        async with client.stream("GET", f"{base}/y") as r:  # the threads are still there
            await asyncio.wait_for(read_all(r.extensions[BODY_EXTENSION], after), 10)
    assert sink.landings == [None] and bytes(after.data) == BODY
    writer = {  # where it raised
        "with the head": {"MainThread"},
        "with the head, over TLS": {"sa1b-tls-0"},
        "TLS thread": {"sa1b-tls-0"},
    }
    assert sink.threads == writer.get(path, sink.threads - {"MainThread", *TLS_THREADS})


@pytest.mark.parametrize("during", ["a body", "an opening"])
async def test_a_bug_that_ends_the_tls_thread_fails_its_calls_and_the_next_call_starts_anew(
    certificate, monkeypatch, during
):
    from sa1b_cli.download.reactor import TlsReactor, _Job

    take_new = TlsReactor._take_new
    bugs = [RuntimeError("a bug in the TLS thread")]

    def once_broken(self, *args):
        bodies = any(isinstance(job, _Job) for job in self._new)
        if bugs and bodies == (during == "a body"):
            raise bugs.pop()
        take_new(self, *args)

    monkeypatch.setattr(TlsReactor, "_take_new", once_broken)
    srv, url, trusted = await tls_server(certificate, BODY)
    sink, after = Sink(), Sink()
    try:
        async with httpx.AsyncClient(transport=WireTransport(ssl_context=trusted)) as client:
            with pytest.raises(RuntimeError, match="a bug in the TLS thread"):
                async with client.stream("GET", url) as r:
                    await asyncio.wait_for(read_all(r.extensions[BODY_EXTENSION], sink), 10)
            async with client.stream("GET", url) as r:
                await asyncio.wait_for(read_all(r.extensions[BODY_EXTENSION], after), 10)
    finally:
        srv.close()
    assert not bugs and bytes(after.data) == BODY
    assert sink.landings[-1:] == ([None] if during == "a body" else [])


class SplitSink(Sink):
    """After its first write, its room shrinks to 100,000 bytes more: a tail split landing
    between two writes of the receiving thread (lowering ``piece.end``)."""

    def write(self, view: memoryview) -> None:
        super().write(view)
        if self.limit > len(self.data) + 100_000:
            self.limit = len(self.data) + 100_000


@pytest.mark.parametrize("tls", [False, True])
async def test_a_split_during_a_call_stops_the_thread_at_the_new_end(server, request, tls):
    """Not a byte past it: those belong to the connection that took the split's half.

    (The thread went on to the end of its call: a tenth of the bytes of a 10 x 96 MiB
    run at 8 MiB/s a connection were fetched twice.)
    """
    served, trusted = contexts(request, tls)

    async def serve(reader, writer):
        async for _ in requests(reader):
            await head_alone(writer, len(BODY))
            writer.write(BODY)  # all at once: the thread never waits for bytes
            await writer.drain()

    base = await server(serve, tls=served)
    sink = SplitSink()
    async with (
        httpx.AsyncClient(transport=WireTransport(ssl_context=trusted)) as client,
        client.stream("GET", f"{base}/x", extensions={CHUNK_EXTENSION: 65536}) as r,
    ):
        await asyncio.sleep(0.2)  # the body waits in the socket: the call's turn is not spent
        n = await r.extensions[BODY_EXTENSION].read_through(len(BODY), sink)
    assert n == len(sink.data) == (64 << 10) + 100_000  # one 64 KiB buffer, then the room
    assert bytes(sink.data) == BODY[:n] and sink.landings == [None]


class SlowSink(Sink):
    """Its first write holds the thread that calls it (a slow disk)."""

    def write(self, view: memoryview) -> None:
        if not self.data:
            threading.Event().wait(0.3)
        super().write(view)


async def test_a_tls_call_that_waited_for_the_thread_still_gets_its_whole_turn(certificate, server):
    """Its 50 ms run from when the TLS thread takes it up, not from when it was asked.

    (Timed from the asking, a call that waited came back after one 16 KiB record, and the
    calls after it too: the thread fell further behind with every turn.)
    """
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(*certificate)

    async def serve(reader, writer):
        async for _ in requests(reader):
            await head_alone(writer, len(BODY))
            writer.write(BODY)  # all of it at once: it waits in the socket for the reader
            await writer.drain()

    base = await server(serve, tls=served)
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    slow, waited = SlowSink(), Sink()
    one = WireTransport(ssl_context=trusted, receivers=1)  # so b waits behind a's slow write
    async with (
        httpx.AsyncClient(transport=one) as client,
        client.stream("GET", f"{base}/a") as a,
        client.stream("GET", f"{base}/b") as b,
    ):
        holding = asyncio.create_task(a.extensions[BODY_EXTENSION].read_through(1000, slow))
        await asyncio.sleep(0.1)  # the TLS thread is in the slow write now
        got = await b.extensions[BODY_EXTENSION].read_through(256 << 10, waited)
        await holding
    assert got == 256 << 10  # the whole buffer, not one record


async def read_all(body: Any, sink: Sink) -> None:
    """Every call until the end."""
    while await body.read_through(1 << 20, sink):
        pass


def test_a_buffer_is_lent_until_given_back_and_then_reused():
    pool = BufferPool()
    first = pool.take(100_000)
    assert len(first) == 1 << 17  # a power of two: few sizes, many reuses
    second = pool.take(100_000)
    assert second is not first  # still lent: never handed out twice
    pool.give(first)
    assert pool.take(70_000) is first  # same bucket, given back: reused
    assert pool.kept == 0


def test_the_pool_keeps_at_most_its_bound_and_drops_sizes_no_longer_asked_for_first():
    pool = BufferPool(keep=2 << 20)
    big = [pool.take(1 << 20), pool.take(1 << 20), pool.take(1 << 20)]
    for buffer in big:
        pool.give(buffer)
    assert pool.kept == 2 << 20 and big[2] not in pool.free[1 << 20]  # did not fit: dropped
    small = pool.take(256 << 10)  # many connections now: smaller blocks
    view = memoryview(small)[:10]  # a stale view left somewhere: giving back must not fail
    pool.give(small)
    assert len(pool.free[1 << 20]) == 1 and big[0] not in pool.free[1 << 20]  # made room
    assert pool.free[1 << 18] == deque([small]) and pool.kept == (1 << 20) + (256 << 10)
    view.release()


async def test_ssl_cert_file_is_trusted_as_httpx_would(certificate, monkeypatch):
    """A cluster with its own CA sets SSL_CERT_FILE; without it the certificate is refused."""
    cert, _ = certificate
    srv, url, _ = await tls_server(certificate, b"ok")
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        async with httpx.AsyncClient(transport=WireTransport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        async with httpx.AsyncClient(transport=WireTransport()) as client:
            assert (await client.get(url)).text == "ok"
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "No such file or directory"), (b"not a certificate\n", "NO_CERTIFICATE_OR_CRL_FOUND")],
)
async def test_an_ssl_cert_file_that_is_no_trust_store_stops_the_run_in_words(
    tmp_path, monkeypatch, content, says
):
    """Not a failed connect per shard: the user's setting, said once, exit 2."""
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    async with httpx.AsyncClient(transport=WireTransport()) as client:
        with pytest.raises(UsageError, match=f"SSL_CERT_FILE=.*ca.pem cannot be used [(]{says}[)]"):
            await client.get("https://127.0.0.1:9/a.tar")


async def test_outcomes_posted_by_many_threads_all_settle_in_order_with_few_wake_ups(monkeypatch):
    import threading

    loop = asyncio.get_running_loop()
    mailbox = _Mailbox.of(loop)
    assert _Mailbox.of(loop) is mailbox  # one per loop
    wakeups = []
    real = loop.call_soon_threadsafe

    def counted(*args):
        wakeups.append(1)
        return real(*args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    futures = [loop.create_future() for _ in range(400)]

    def post(indexes: range) -> None:
        for i in indexes:
            mailbox.post((futures[i], (True, i), None))

    threads = [
        threading.Thread(target=post, args=(range(k * 100, k * 100 + 100),)) for k in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # the loop is blocked meanwhile: every post finds a drain already due
    assert await asyncio.gather(*futures) == list(range(400))
    assert 1 <= len(wakeups) <= len(threads)  # not one self-pipe write per outcome


async def test_an_error_while_settling_one_outcome_does_not_hold_up_the_others():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
    mailbox = _Mailbox.of(loop)
    first, second = loop.create_future(), loop.create_future()

    def broken(outcome):
        raise ValueError(outcome)

    mailbox.post((first, (True, 1), broken))
    mailbox.post((second, (False, OSError("lost")), None))
    assert await first == 1  # resolved all the same: its caller must not wait for ever
    with pytest.raises(OSError, match="lost"):
        await second
    assert [type(e) for e in errors] == [ValueError]


def test_the_record_reader_falls_back_to_recv_into_without_the_ssl_object():
    """A socket closed under the thread (or another ssl module) has no ``_sslobj``."""

    class Closed:
        def recv_into(self, view: memoryview, n: int) -> int:
            view[:n] = b"r" * n
            return n

    buffer = bytearray(8)
    assert _record_reader(Closed())(3, memoryview(buffer)[2:]) == 3  # type: ignore[arg-type]
    assert buffer == b"\0\0rrr\0\0\0"
