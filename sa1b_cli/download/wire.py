"""An httpx transport for large HTTP/1.1 bodies: h11 frames every response, threads move the bytes.

httpx stays the client API (requests, timeouts, exceptions). A plain HTTP connection is a
blocking socket with a thread of its own (``conn.Connection``): the thread receives a whole
block in one ``recv(MSG_WAITALL)`` with the GIL released and writes it, and the event loop
hears once per call. A TLS connection has no thread: two TLS threads (``reactor``) run its
opening and exchanges (``steps``) and its bodies on non-blocking sockets. h11 writes every
request and parses every response head (``heads``, for both ways): status line,
header syntax, 1xx, Content-Length against Transfer-Encoding, keep-alive. A sized body is
then read raw, exactly the length h11 accepted; chunked and close-delimited bodies go
through h11 event by event. Request targets are sent byte for byte (a signed query must
not be re-encoded).

Receive buffers belong to the pool until a read takes one, and go back when that read's
write has landed (``BufferPool.give``); nothing else ever holds them.

Scope: HTTP/1.1 over TCP or TLS, keep-alive reuse. Proxies are not handled here:
``make_transport`` returns httpx's own transport when one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import mmap
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import h11
import httpx

from sa1b_cli.core.errors import UsageError
from sa1b_cli.core.text import format_size, shown
from sa1b_cli.download.conn import (
    POLL,
    Abandoned,
    BlockSink,
    Connection,
    Outcome,
    open_connection,
)
from sa1b_cli.download.heads import (
    HEAD_READ,
    MAX_HEAD,
    MAX_INTERIM,
    Head,
    HeadReader,
    framing,
    protocol_error,
    request_bytes,
)
from sa1b_cli.download.reactor import TlsReactor
from sa1b_cli.download.steps import Address, Exchanging, Opening

__all__ = [
    "BODY_EXTENSION",
    "CHUNK_EXTENSION",
    "MAX_HEAD",
    "MAX_INTERIM",
    "PROXY_VARS",
    "BlockSink",
    "BufferPool",
    "WireTransport",
    "make_transport",
]

CHUNK = 1 << 20  # bytes one receive fills at most, unless the request says otherwise
CHUNK_EXTENSION = "sa1b.chunk"  # request extension: the body read size this caller wants
BODY_EXTENSION = "sa1b.body"  # response extension: the body, for ``read_through``
BUDGET = 0.05  # seconds a thread keeps receiving before it reports progress to the loop
# Threads receiving TLS bodies: with one, several shards at once left part of a core
# idle while that thread was the bottleneck (docs/performance.md).
RECEIVERS = min(2, os.cpu_count() or 1)
RESOLVED_FOR = 60.0  # seconds a host's addresses are kept (a CDN's answers live about that)
_STREAM_READ = 64 << 10  # chunked and close-delimited bodies: rare, and never the fast path
T = TypeVar("T")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class BufferPool:
    """Receive buffers: ``take`` lends one, ``give`` returns it once its bytes have landed.

    A fresh 1 MiB buffer costs a zero-fill and 256 page faults, so buffers are reused.
    Each is an anonymous mapping of its own (page-aligned, zero-filled once by the kernel,
    its memory back to the system as soon as it is dropped). The pool keeps at most
    ``keep`` bytes of idle buffers; sizes nobody asks for any more are dropped first.
    """

    def __init__(self, keep: int = 32 << 20) -> None:
        self.keep = keep
        self.kept = 0  # bytes of idle buffers held
        self.free: dict[int, deque[mmap.mmap]] = {}

    @staticmethod
    def bucket(size: int) -> int:
        """A power of two: few sizes, many reuses."""
        return 1 << max(16, (size - 1).bit_length())

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes, lent until ``give``."""
        bucket = self.bucket(size)
        ring = self.free.get(bucket)
        if ring:
            self.kept -= bucket
            return ring.pop()
        return mmap.mmap(-1, bucket, flags=mmap.MAP_PRIVATE)

    def give(self, buffer: mmap.mmap) -> None:
        """Take a lent buffer back (its last reader is done with it).

        A buffer let go is only dropped, never closed: a stale view of it may outlive
        the read (closing a mapping with views raises); its memory goes with the last one.
        """
        size = len(buffer)
        for other, ring in self.free.items():  # make room: other sizes go first
            while ring and other != size and self.kept + size > self.keep:
                ring.popleft()
                self.kept -= other
        if self.kept + size > self.keep:
            return
        self.free.setdefault(size, deque()).append(buffer)
        self.kept += size


# -- one exchange: request out, head in (on a plain connection's thread) ----------------------


def _exchange(conn: Connection, request: h11.Request, body: bytes, limit: float | None) -> Head:
    """Send one request and read its final response head, all within ``limit`` seconds."""
    parser, data = request_bytes(request, body)
    try:
        conn.sendall(data)
    except OSError as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise httpx.WriteError(msg) from exc
    return framing(parser, _final_head(conn, parser, limit), request.method)


def _final_head(conn: Connection, parser: h11.Connection, limit: float | None) -> h11.Response:
    deadline = None if limit is None else time.monotonic() + limit
    view, reader = memoryview(bytearray(HEAD_READ)), HeadReader(parser)
    while (event := reader.event()) is None:
        n = _receive(conn, view[: reader.room()], wait_all=False)
        if n > 0:
            reader.feed(bytes(view[:n]))
        elif n == 0:
            reader.feed(b"")
        elif conn.closed:
            raise Abandoned
        if deadline is not None and time.monotonic() >= deadline:
            raise HeadReader.timeout()
    return event


def _receive(conn: Connection, view: memoryview, *, wait_all: bool) -> int:
    try:
        return conn.recv_into(view, wait_all=wait_all)
    except OSError as exc:  # ssl.SSLError included
        msg = f"{type(exc).__name__}: {exc}"
        raise httpx.ReadError(msg) from exc


def _silent(waited: float, limit: float | None, what: str) -> float:
    """One more POLL without a byte: the seconds waited so far, or ReadTimeout past ``limit``."""
    waited += POLL
    if limit is not None and waited >= limit:
        msg = f"no {what} before the read timeout"
        raise httpx.ReadTimeout(msg)
    return waited


def _receive_through(
    conn: Connection, buffer: memoryview, total: int, sink: BlockSink, limit: float | None
) -> tuple[int, OSError | None]:
    """Receive up to ``total`` bytes through ``buffer``, handing each fill to ``sink.write``.

    On the connection's thread, for at most about ``BUDGET`` seconds: the loop hears once
    per call, not once per buffer. Returns the count (0 at the end, or once the connection
    is closed from the loop) and the write's error, if any.
    """
    got, waited, start = 0, 0.0, time.monotonic()
    while (fill := min(len(buffer), total - got, sink.room())) > 0:
        n = _receive(conn, buffer[:fill], wait_all=True)
        if n < 0:  # nothing for POLL seconds
            if got or conn.closed:
                break
            waited = _silent(waited, limit, "data")
            continue
        if n == 0:
            break
        try:
            sink.write(buffer[:n])
        except OSError as exc:  # the disk's error, not the network's: the caller raises it
            return got, exc
        got += n
        if time.monotonic() - start >= BUDGET:
            break
    return got, None


def _receive_some(conn: Connection, size: int, limit: float | None) -> bytes:
    """Whatever arrives first, up to ``size`` bytes; b"" at the end."""
    view, waited = memoryview(bytearray(size)), 0.0
    while (n := _receive(conn, view, wait_all=False)) < 0:
        if conn.closed:
            raise Abandoned
        waited = _silent(waited, limit, "data")
    return bytes(view[:n])


# -- the body, on the event loop ---------------------------------------------------------------


class _Body(httpx.AsyncByteStream):
    """A response body; gives the connection back when it was read to its end."""

    def __init__(
        self,
        transport: WireTransport,
        conn: Connection,
        head: Head,
        *,
        timeout: float | None,
        chunk: int,
    ) -> None:
        self.transport, self.conn, self.head, self.timeout = transport, conn, head, timeout
        self.chunk = chunk  # the caller's buffer size: with many connections, smaller
        self.remaining = head.length  # a sized body: bytes still to come
        self.leftover = head.leftover
        if self.remaining is not None:
            self.remaining -= len(self.leftover)
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head.length is None:
            async for piece in self._framed_by_h11():
                yield piece
        else:
            async for piece in self._sized():
                yield piece
        self.done = True

    async def _sized(self) -> AsyncIterator[bytes]:
        if self.leftover:
            yield self._take_leftover(len(self.leftover))
        while self.remaining:
            size = min(_STREAM_READ, self.remaining)
            data = await self._call(self.conn.call(_receive_some, self.conn, size, self.timeout))
            if not data:
                raise self._short()
            self.remaining -= len(data)
            yield data

    async def _framed_by_h11(self) -> AsyncIterator[bytes]:
        """Chunked or close-delimited: h11 takes every byte apart."""
        parser = self.head.parser
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                raise protocol_error(exc) from exc
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return
            else:  # NEED_DATA
                call = self.conn.call(_receive_some, self.conn, _STREAM_READ, self.timeout)
                parser.receive_data(await self._call(call))

    def _take_leftover(self, size: int) -> bytes:
        data, self.leftover = self.leftover[:size], self.leftover[size:]
        return data

    def _short(self) -> httpx.RemoteProtocolError:
        self.conn.closed = True
        missing = format_size(self.remaining or 0)
        msg = f"the connection closed {missing} before the end"
        return httpx.RemoteProtocolError(msg)

    async def _call(self, call: Awaitable[T]) -> T:
        """A connection call whose failure leaves the connection unusable."""
        try:
            return await call
        except Abandoned as exc:
            self.conn.closed = True
            raise httpx.ReadError(str(exc)) from exc
        except httpx.TransportError:
            self.conn.closed = True
            raise

    async def read_through(self, size: int, sink: BlockSink) -> int:
        """Up to ``size`` more bytes of a sized body, written by ``sink`` as they come.

        The fast path of a download: the connection's thread receives and writes buffer
        after buffer, and the loop hears once per call. ``sink.landed`` runs on the loop
        exactly once, even if this call is cancelled. Returns the count, 0 at the end.
        """
        assert self.remaining is not None  # a sized body (the extension is only set then)
        if self._early_alone(size):
            return self._write_leftover(size, sink)  # written here: no network wait
        if self.remaining == 0:  # (and nothing left over: ``_early_alone`` took it)
            self.done = True
            sink.landed(None)
            return 0
        head = self._take_leftover(size)  # over TLS: first into the buffer, written with it
        want = len(head) + min(size - len(head), self.remaining)
        pool, size = self.transport.buffers, min(want, self.chunk)
        buffer = pool.take(size)

        def settled(outcome: Outcome) -> None:  # the thread is done with the buffer
            ok, value = outcome
            try:
                sink.landed(value[1] if ok else None)
            finally:
                pool.give(buffer)

        view = memoryview(buffer)[:size]
        view[: len(head)] = head
        n, error = await self._call(self._receive(view, want, len(head), sink, settled))
        if error is not None:
            raise error
        if n == 0 and sink.room() > 0:  # (with no room, a split took the rest)
            raise self._short()
        self.remaining -= max(0, n - len(head))
        self.done = self.remaining == 0
        return n

    def _early_alone(self, size: int) -> bool:
        """Whether the bytes that came with the head are written now, on the loop, alone.

        Over TLS they go first into the next call's buffer instead: a turn and a write of
        their own cost one more hop through the loop. Not over plain HTTP: a call there
        fills whole buffers, 0.1-0.3 s on a capped connection, and these bytes, counted at
        once, are what the connection controller's first look sees (without them its first
        growth step came 0.2 s later: docs/performance.md).
        """
        early = len(self.leftover)
        if not early:
            return False
        return not self.conn.tls or early >= min(size, self.chunk) or not self.remaining

    def _receive(
        self,
        view: memoryview,
        want: int,
        filled: int,
        sink: BlockSink,
        settled: Callable[[Outcome], None],
    ) -> Awaitable[tuple[int, OSError | None]]:
        """The call that receives ``want`` bytes into ``view`` (its first ``filled`` there)."""
        if self.conn.tls:  # a few threads receive every TLS body (see reactor.py)
            reactor = self.transport.receiver(sink)
            return reactor.receive_through(
                self.conn, view, want, sink, self.timeout, filled=filled, settled=settled
            )
        assert not filled  # (see ``_early_alone``)
        args = (self.conn, view, want, sink, self.timeout)
        return self.conn.call(_receive_through, *args, settled=settled)

    async def finished(self) -> bool:
        """Whether no byte is left: a sized body knows without reading."""
        self.done = not self.leftover and self.remaining == 0
        return self.done

    def _write_leftover(self, size: int, sink: BlockSink) -> int:
        data = self._take_leftover(size)
        error: OSError | None = None
        try:
            sink.write(memoryview(data))
        except OSError as exc:
            error = exc
        finally:  # even after a bug: the part file waits for every block to land
            sink.landed(error)
        if error is not None:
            raise error
        self.done = not self.leftover and self.remaining == 0
        return len(data)

    async def aclose(self) -> None:
        reusable = self.done and self.head.framed and self.head.parser.our_state is h11.DONE
        if reusable and self.head.length is not None:
            reusable = not self.head.parser.trailing_data[0]  # nothing past the body
        if reusable and not self.conn.closed:  # is it still usable? asked when taken again
            self.transport.give_back(self.conn)
        else:
            self.conn.close()


class WireTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections with zero-copy body reads, reused while the server allows."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, receivers: int = RECEIVERS
    ) -> None:
        self.ssl_context = ssl_context
        self.buffers = BufferPool()
        self.reactors = tuple(TlsReactor(f"sa1b-tls-{k}") for k in range(receivers))
        self.idle: dict[tuple[str, str, int], list[Connection]] = {}
        # A TLS session ticket per host: later connections resume it (no certificate
        # exchange, no signature on the server), verified as the first one was.
        self.sessions: dict[tuple[str, str, int], ssl.SSLSession] = {}
        self.resolved: dict[tuple[str, int], tuple[float, list[Address]]] = {}  # (until, them)

    def receiver(self, sink: BlockSink) -> TlsReactor:
        """The thread already writing the sink's file, else the one with fewer calls.

        Two threads writing one file take its lock in turn and spin on it: one 768 MiB
        shard cost 0.5 CPU s/GiB more, for no time gained.
        """
        for reactor in self.reactors:
            if reactor.files[sink.file]:
                return reactor
        return self._tls_thread()

    def give_back(self, conn: Connection) -> None:
        self.idle.setdefault(conn.key, []).append(conn)

    def _context(self) -> ssl.SSLContext:
        """The trust store httpx would use: SSL_CERT_FILE or SSL_CERT_DIR if set, else certifi.

        (A cluster behind a TLS-inspecting proxy or with its own CA sets one of those.)
        """
        if self.ssl_context is None:
            if cafile := os.environ.get("SSL_CERT_FILE"):
                context = _trusting(cafile)
            elif os.environ.get("SSL_CERT_DIR"):
                context = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi  # httpx's own dependency

                context = ssl.create_default_context(cafile=certifi.where())
            context.set_alpn_protocols(["http/1.1"])
            self.ssl_context = context
        return self.ssl_context

    async def _connect(self, url: httpx.URL, limit: float | None) -> Connection:
        scheme = url.scheme
        if scheme not in ("http", "https"):
            msg = f"sa1b fetches only http and https links, not {scheme!r}"
            raise httpx.UnsupportedProtocol(msg)
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.host, port)
        idle = self.idle.get(key, [])
        while idle:
            conn = idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        conn = Connection(key)
        try:
            if scheme == "https":
                await self._open_tls(conn, url.host, port, limit or 3600.0)
            else:
                await conn.call(open_connection, conn, url.host, port, limit or 3600.0)
        except TimeoutError as exc:
            conn.close()
            msg = f"could not connect to {url.host} in time"
            raise httpx.ConnectTimeout(msg) from exc
        except (OSError, ssl.SSLError, UnicodeError) as exc:  # (a name IDNA refuses)
            conn.close()
            msg = f"{type(exc).__name__}: {exc}"
            raise httpx.ConnectError(msg) from exc
        return conn

    async def _open_tls(self, conn: Connection, host: str, port: int, limit: float) -> None:
        """Connect and shake hands on a TLS thread (``steps.Opening``), not a thread of its own."""
        deadline = time.monotonic() + limit
        addresses = await self._addresses(host, port)
        session = self.sessions.get(conn.key)
        step = Opening(conn, addresses, host, self._context(), session, deadline)
        await self._tls_thread().run(conn, step)

    async def _addresses(self, host: str, port: int) -> list[Address]:
        """Where ``host`` is: an address as it stands, else the resolver's answer, kept for
        RESOLVED_FOR seconds (each lookup is a hand-off to a thread and back)."""
        with contextlib.suppress(ValueError):
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
        until, addresses = self.resolved.get((host, port), (0.0, []))
        if time.monotonic() >= until:
            loop = asyncio.get_running_loop()
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [(int(f), int(k), proto, name, where) for f, k, proto, name, where in found]
            self.resolved[(host, port)] = (time.monotonic() + RESOLVED_FOR, addresses)
        return addresses

    def _tls_thread(self) -> TlsReactor:
        return min(self.reactors, key=TlsReactor.calls)

    async def _request_head(
        self, conn: Connection, request: httpx.Request, limit: float | None
    ) -> Head:
        """Send the request and read its head: on its thread, or a TLS thread (``Exchanging``)."""
        body = await request.aread()
        message = h11.Request(
            method=request.method, target=request.url.raw_path, headers=request.headers.raw
        )
        if not conn.tls:
            return await conn.call(_exchange, conn, message, body, limit)
        parser, data = request_bytes(message, body)
        deadline = math.inf if limit is None else time.monotonic() + limit
        step = Exchanging(conn, data, parser, message.method, deadline)
        head: Head = await self._tls_thread().run(conn, step)
        return head

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        conn = await self._connect(request.url, timeouts.get("connect"))
        try:
            head = await self._request_head(conn, request, timeouts.get("read"))
        except Abandoned as exc:
            raise httpx.ReadError(str(exc)) from exc
        except h11.LocalProtocolError as exc:  # a request h11 will not write: never sent
            conn.close()
            msg = f"the request cannot be sent ({exc})"
            raise httpx.LocalProtocolError(msg) from exc
        except BaseException:
            conn.close()
            raise
        chunk = int(request.extensions.get(CHUNK_EXTENSION, CHUNK))
        stream = _Body(self, conn, head, timeout=timeouts.get("read"), chunk=chunk)
        if conn.tls and conn.key not in self.sessions and (session := conn.session()):
            self.sessions[conn.key] = session  # TLS 1.3 sends its ticket after the handshake
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if head.length is not None:
            extensions[BODY_EXTENSION] = stream  # for readers that write as bytes arrive
        return httpx.Response(
            head.status, headers=head.headers, stream=stream, extensions=extensions
        )

    async def aclose(self) -> None:
        for reactor in self.reactors:
            reactor.close()
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


def _trusting(cafile: str) -> ssl.SSLContext:
    """A context that trusts ``cafile``; a file that is no trust store stops the run (it
    is the user's setting, and every TLS connection would fail on it)."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except OSError as exc:  # ssl.SSLError included
        why = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
        msg = f"SSL_CERT_FILE={shown(cafile, 200)} cannot be used ({why or type(exc).__name__})"
        hint = "Point SSL_CERT_FILE at a PEM file of trusted certificates, or unset it."
        raise UsageError(msg, hint=hint) from exc


def make_transport() -> httpx.AsyncBaseTransport | None:
    """Our transport, or None (httpx's own) when the environment asks for a proxy."""
    if any(os.environ.get(name) for name in PROXY_VARS):
        return None
    return WireTransport()
