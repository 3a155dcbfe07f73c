"""An httpx transport for large HTTP/1.1 bodies: each connection is a blocking socket with a thread.

httpx stays the client API (requests, redirects, timeouts, exceptions); only the bytes on
the wire go another way. Measured here (4 x 512 MiB from loopback nginx into tmpfs):
httpcore costs 1.8-5 CPU s/GiB; an asyncio ``BufferedProtocol`` 2.8-3.0 for the whole
download, a third of it the event loop's per-read work (each read wakes a task, and
flow control toggles epoll); a thread per connection that receives a whole block in one
``recv(MSG_WAITALL)`` with the GIL released, 1.2 (curl: 1.45). So a connection's thread
does every blocking step (connect, TLS, request, head, body blocks) and the event loop
only hears once per block (up to 1 MiB), through a future.

Body chunks are memoryviews of fresh buffers, handed on without a copy (``pwritev`` and
the hashers take them as they are). Request targets are sent byte for byte (a signed
query must not be re-encoded). A thread waits at most ``POLL`` seconds in one call, so a
cancelled read, a closed connection or the end of the program never waits on the network.

Scope: HTTP/1.1 over TCP or TLS, Content-Length, chunked or close-delimited bodies,
keep-alive reuse. Proxies are not handled here: ``make_transport`` returns httpx's own
transport when a proxy is configured in the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mmap
import os
import queue
import select
import socket
import ssl
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import httpx

__all__ = [
    "BODY_EXTENSION",
    "CHUNK_EXTENSION",
    "BlockSink",
    "BufferPool",
    "WireTransport",
    "make_transport",
]

CHUNK = 1 << 20  # bytes one receive fills at most, unless the request says otherwise
CHUNK_EXTENSION = "sa1b.chunk"  # request extension: the body read size this caller wants
BODY_EXTENSION = "sa1b.body"  # response extension: the body, for ``read_through``
POLL = 1.0  # seconds one blocking call may wait before it reports back
BUDGET = 0.05  # seconds a thread keeps receiving before it reports progress to the loop
_HEAD_READ = 64 << 10
_HEAD_LIMIT = 64 << 10
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

T = TypeVar("T")
Outcome = tuple[bool, Any]  # (True, the call's result) or (False, the exception it raised)


class BlockSink(Protocol):
    """Where a body's bytes go as they arrive (see ``_Body.read_through``)."""

    def write(self, view: memoryview) -> None:
        """Blocking, on the connection's thread; called once per buffer filled, in order."""

    def landed(self, error: OSError | None) -> None:
        """On the event loop, once ``write`` is over (or was not needed)."""


_UNUSED = 3  # references to a pooled buffer nobody else holds: the ring, a local, the call


class BufferPool:
    """Receive buffers, reused once nothing refers to them any more.

    A fresh 1 MiB buffer costs a zero-fill and 256 page faults: measured with py-spy, the
    allocation was the busiest line of the event loop. A memoryview holds a reference to
    the buffer it views, so a buffer whose reference count is back to the pool's own has
    no view left (none queued, none being written or hashed) and can be filled again.

    Each buffer is an anonymous mapping of its own, not a ``bytearray`` from malloc: it is
    page-aligned, the kernel zero-fills it once (no memset), and dropping it gives the
    memory back at once. Measured A/B (7 runs each, both orders): 4 x 512 MiB from
    loopback into tmpfs 1.46 against 1.52-1.57 CPU s/GiB; --jobs 16 to disk, peak RSS
    median 69 against 75 MB (at 128 connections the heap held 22-39 MB before).
    """

    def __init__(self, keep: int = 32 << 20) -> None:
        self.keep = keep  # bytes of buffers the pool holds on to at most
        self.kept = 0
        self.rings: dict[int, deque[mmap.mmap]] = {}

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes (a power of two: few sizes, many reuses)."""
        bucket = 1 << max(16, (size - 1).bit_length())
        ring = self.rings.setdefault(bucket, deque())
        for _ in range(len(ring)):
            buffer = ring[0]
            ring.rotate(-1)
            if sys.getrefcount(buffer) == _UNUSED:
                return buffer
        buffer = mmap.mmap(-1, bucket, flags=mmap.MAP_PRIVATE)
        if self.kept + bucket > self.keep:
            self._evict(bucket)
        if self.kept + bucket <= self.keep:
            ring.append(buffer)
            self.kept += bucket
        return buffer

    def _evict(self, wanted: int) -> None:
        """Let go of idle buffers of other sizes until one of ``wanted`` bytes fits.

        The block size follows the connection count, so the sizes asked for change during a
        run; buffers of a size nobody asks for any more kept the pool full, and every buffer
        of the new size became a fresh allocation that malloc then kept (measured at
        --jobs 16 to disk: 452 fresh 256 KiB buffers in one run, peak RSS 97 MB, not 72).
        """
        for size, ring in self.rings.items():
            if size == wanted:
                continue
            for _ in range(len(ring)):
                if self.kept + wanted <= self.keep:
                    return
                buffer = ring.popleft()
                if sys.getrefcount(buffer) == _UNUSED - 1:  # the ring no longer holds it
                    self.kept -= size
                else:
                    ring.append(buffer)  # still viewed somewhere: it stays


class _Abandoned(OSError):
    """The connection was closed while its thread worked: nobody waits for the result."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNABORTED, "the connection was closed")


class _Connection:
    """One socket and the one thread that does its blocking calls, one call at a time.

    The event loop never touches the socket while a call runs; ``close`` from the loop
    shuts it down (which wakes a blocked receive) and the thread closes it once its call
    returns, so a file descriptor is never closed under a call that still uses it.
    """

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.sock: socket.socket | None = None
        self.tls = False
        self.leftover = memoryview(b"")  # bytes received past the last response head
        self.closed = False  # the peer ended the stream, or we closed the connection
        self._abandoned = False
        self._busy = False
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Any] | None]
        self._calls = queue.SimpleQueue()
        # A daemon: a thread waiting on the network never holds up the end of the program.
        threading.Thread(target=self._serve, name="sa1b-wire", daemon=True).start()

    async def call(
        self, fn: Callable[..., T], *args: Any, settled: Callable[[Outcome], None] | None = None
    ) -> T:
        """Run ``fn(*args)`` on this connection's thread; cancelling closes the connection.

        ``settled`` runs on the loop with the outcome once the thread is done, even when
        the caller was cancelled meanwhile (what the thread did must still be accounted for).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, args, (future, settled, _Mailbox.of(loop))))
        try:
            return await future
        except asyncio.CancelledError:
            self.close()  # the call may still be receiving: nothing else may use the socket
            raise

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, args, (future, settled, mailbox) = item
            with self._lock:
                self._busy = not self._abandoned
            try:
                if not self._busy:
                    raise _Abandoned
                outcome: Outcome = (True, fn(*args))
            except BaseException as exc:  # handed to the waiting task, raised there
                outcome = (False, exc)
            finally:
                with self._lock:
                    self._busy = False
                    if self._abandoned:
                        self._close_socket()
            mailbox.post((future, outcome, settled))

    def close(self) -> None:
        with self._lock:
            if self._abandoned:
                return
            self._abandoned = self.closed = True
            if self._busy and self.sock is not None:
                # Wakes a receive blocked in the thread; the thread closes the socket.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            else:
                self._close_socket()
        self._calls.put(None)

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def reusable(self) -> bool:
        """An idle connection the server has not closed (nothing readable while idle)."""
        if self.closed or self.sock is None or self.leftover:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable


class _Mailbox:
    """Outcomes from the connection threads, handed to the loop in batches.

    ``call_soon_threadsafe`` writes to the loop's self-pipe on every call: a system call
    on the thread (which gives up the GIL and must win it back) and a wake-up of the loop
    for each outcome. Here only the first outcome of a batch does that; the others join
    the queue the loop is about to empty. (A deque's append and popleft are atomic.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)  # not the loop itself: the loop is this entry's key
        self.items: deque[tuple[asyncio.Future[Any], Outcome, Any]] = deque()
        self.scheduled = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        """The loop's mailbox (called on the loop's thread only)."""
        mailbox = _MAILBOXES.get(loop)
        if mailbox is None:
            mailbox = _MAILBOXES[loop] = cls(loop)
        return mailbox

    def post(self, item: tuple[asyncio.Future[Any], Outcome, Any]) -> None:
        """On a connection's thread."""
        self.items.append(item)
        if not self.scheduled and (loop := self.loop()) is not None:
            self.scheduled = True
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        """On the loop: settle every outcome posted so far, in order."""
        self.scheduled = False  # first: an outcome posted from now on schedules another drain
        while self.items:
            try:
                _settle(*self.items.popleft())
            except Exception as exc:  # as the loop does with a callback's error: report, go on
                context = {"message": "settling a connection call", "exception": exc}
                asyncio.get_running_loop().call_exception_handler(context)


_MAILBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox]
_MAILBOXES = weakref.WeakKeyDictionary()


def _settle(
    future: asyncio.Future[Any], outcome: Outcome, settled: Callable[[Outcome], None] | None
) -> None:
    try:
        if settled is not None:
            settled(outcome)
    finally:  # whatever ``settled`` does, the caller must not wait for ever
        _resolve(future, outcome)


def _resolve(future: asyncio.Future[Any], outcome: Outcome) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


# -- blocking steps, run on a connection's thread -------------------------------------------


def _open(
    conn: _Connection, host: str, port: int, tls: ssl.SSLContext | None, limit: float
) -> None:
    """Connect (and shake hands) in slices of POLL seconds, so a closed connection stops it."""
    deadline = time.monotonic() + limit
    error: Exception | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        conn.sock = sock
        try:
            _connect(conn, sock, address, deadline)
            break
        except (OSError, _Abandoned) as exc:
            sock.close()
            error = exc
            if isinstance(exc, (_Abandoned, TimeoutError)):
                raise
    else:
        raise error or OSError(f"no address for {host}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        sock.settimeout(POLL)
        secure = tls.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        conn.sock, conn.tls = secure, True
        _handshake(conn, secure, deadline)
    else:
        # Blocking, with kernel timeouts: one recv(MSG_WAITALL) then fills a whole block.
        sock.setblocking(True)
        timeval = struct.pack("ll", int(POLL), int(POLL % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _connect(conn: _Connection, sock: socket.socket, address: Any, deadline: float) -> None:
    sock.setblocking(False)
    code = sock.connect_ex(address)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    waiting = code in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)
    while waiting and not poller.poll(POLL * 1000):
        if conn.closed:
            raise _Abandoned
        if time.monotonic() >= deadline:
            raise TimeoutError
    if not waiting and code != 0:
        raise OSError(code, os.strerror(code))
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


def _handshake(conn: _Connection, sock: ssl.SSLSocket, deadline: float) -> None:
    while True:
        try:
            sock.do_handshake()
            return
        except TimeoutError:
            if conn.closed:
                raise _Abandoned from None
            if time.monotonic() >= deadline:
                raise


def _recv(conn: _Connection, view: memoryview) -> int:
    """Fill ``view`` if the bytes come within POLL seconds: the count, 0 at the end, -1 if none."""
    sock = conn.sock
    assert sock is not None
    try:
        if not conn.tls:
            try:
                return sock.recv_into(view, len(view), socket.MSG_WAITALL)
            except BlockingIOError:  # SO_RCVTIMEO passed with nothing received
                return -1
        got, deadline = 0, time.monotonic() + POLL
        while got < len(view) and time.monotonic() < deadline:
            try:  # TLS hands over one record per call: loop (the GIL is released in each)
                n = sock.recv_into(view[got:])
            except TimeoutError:
                break
            if n == 0:
                return got  # the end: the next call returns 0
            got += n
        return got or -1
    except OSError as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise httpx.ReadError(msg) from exc


def _silent(waited: float, limit: float | None, what: str) -> float:
    """One more POLL without a byte: the seconds waited so far, or ReadTimeout past ``limit``."""
    waited += POLL
    if limit is not None and waited >= limit:
        msg = f"no {what} before the read timeout"
        raise httpx.ReadTimeout(msg)
    return waited


def _recv_through(
    conn: _Connection, buffer: memoryview, total: int, sink: BlockSink, limit: float | None
) -> tuple[int, OSError | None]:
    """Receive up to ``total`` bytes through ``buffer``, handing each fill to ``sink.write``.

    On the connection's thread, for at most about ``BUDGET`` seconds: the loop hears once
    per call, not once per buffer. Returns the count (0 at the end, or once the connection
    is closed from the loop) and the write's error, if any.
    """
    got, waited, start = 0, 0.0, time.monotonic()
    while got < total:
        n = _recv(conn, buffer[: min(len(buffer), total - got)])
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


def _exchange(conn: _Connection, request: bytes, limit: float | None) -> _Head:
    """Send one request and read the response head; what follows it stays in ``leftover``."""
    sock = conn.sock
    assert sock is not None
    try:
        sock.sendall(request)
    except OSError as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise httpx.WriteError(msg) from exc
    data, buffer = bytearray(), bytearray(_HEAD_READ)
    waited = 0.0
    while True:
        n = _recv_some(conn, memoryview(buffer))
        if n == 0:
            msg = "the server closed the connection before a response"
            raise httpx.RemoteProtocolError(msg)
        if n < 0:
            if conn.closed:
                raise _Abandoned
            waited = _silent(waited, limit, "response")
            continue
        start = max(0, len(data) - 3)
        data += buffer[:n]
        end = data.find(b"\r\n\r\n", start)
        if end >= 0:
            conn.leftover = memoryview(bytes(data[end + 4 :]))
            head = _parse_head(bytes(data[:end]))
            if 100 <= head.status < 200:  # 100 Continue and friends: read the next head
                data = bytearray(conn.leftover)
                conn.leftover = memoryview(b"")
                continue
            return head
        if len(data) > _HEAD_LIMIT:
            msg = "response headers are too large"
            raise httpx.RemoteProtocolError(msg)


def _recv_some(conn: _Connection, view: memoryview) -> int:
    """Whatever arrives first (a head is small: no waiting for a whole buffer)."""
    sock = conn.sock
    assert sock is not None
    try:
        return sock.recv_into(view)
    except (BlockingIOError, TimeoutError):
        return -1
    except OSError as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise httpx.ReadError(msg) from exc


# -- responses ---------------------------------------------------------------------------------


class _Head:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, headers

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.strip()
        return None


def _parse_head(raw: bytes) -> _Head:
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        msg = f"not an HTTP/1.1 status line: {lines[0][:80]!r}"
        raise httpx.RemoteProtocolError(msg)
    headers = []
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if not sep:
            msg = "malformed response header"
            raise httpx.RemoteProtocolError(msg)
        headers.append((key.strip(), value.strip()))
    return _Head(int(parts[1]), headers)


async def _read(
    conn: _Connection, pool: BufferPool, size: int, limit: float | None
) -> memoryview | None:
    """Up to ``size`` bytes (the leftover after the head first), or None at the end."""
    if conn.leftover:
        view, conn.leftover = conn.leftover[:size], conn.leftover[size:]
        return view
    if conn.closed:
        return None
    buffer = memoryview(pool.take(size))[:size]
    waited = 0.0
    while True:
        n = await _guarded(conn.call(_recv, conn, buffer), conn)
        if n == 0:
            conn.closed = True
            return None
        if n > 0:
            return buffer[:n]
        waited = _silent(waited, limit, "data")


async def _guarded(call: Awaitable[T], conn: _Connection) -> T:
    """A connection call whose failure leaves the connection unusable."""
    try:
        return await call
    except _Abandoned as exc:
        conn.closed = True
        raise httpx.ReadError(str(exc)) from exc
    except httpx.TransportError:
        conn.closed = True
        raise


async def _read_through(
    conn: _Connection,
    pool: BufferPool,
    total: int,
    limit: float | None,
    sink: BlockSink,
    chunk: int,
) -> int:
    """Receive up to ``total`` bytes, written by ``sink.write`` on the connection's thread.

    ``sink.landed(error)`` runs on the loop exactly once, when the writing is over (or
    there was nothing to write), even if this call was cancelled meanwhile.
    """
    if conn.leftover or conn.closed:  # no network wait: write the little there is here
        view = await _read(conn, pool, total, limit)
        error: OSError | None = None
        try:
            if view is not None:
                sink.write(view)
        except OSError as exc:
            error = exc
        sink.landed(error)
        if error is not None:
            raise error
        return 0 if view is None else len(view)
    size = min(chunk, total)  # the caller's buffer size: with many connections, smaller
    buffer = memoryview(pool.take(size))[:size]

    def settled(outcome: Outcome) -> None:
        ok, value = outcome
        sink.landed(value[1] if ok else None)

    call = conn.call(_recv_through, conn, buffer, total, sink, limit, settled=settled)
    n, error = await _guarded(call, conn)
    if error is not None:
        raise error
    if n == 0:
        conn.closed = True
    return n


class _Body(httpx.AsyncByteStream):
    """The response body as views of fresh buffers; gives the connection back when done."""

    def __init__(
        self,
        pool: WireTransport,
        conn: _Connection,
        head: _Head,
        *,
        timeout: float | None,
        chunk: int,
        method: str,
    ) -> None:
        self.pool, self.conn, self.timeout, self.chunk = pool, conn, timeout, chunk
        length = head.get(b"content-length")
        chunked = (head.get(b"transfer-encoding") or b"").lower().endswith(b"chunked")
        no_body = method == "HEAD" or head.status in (204, 304)
        self.remaining: int | None = None
        if no_body:
            self.remaining = 0
        elif not chunked and length is not None:
            self.remaining = int(length)
        self.chunked = chunked and not no_body
        self.reusable = (head.get(b"connection") or b"").lower() != b"close" and (
            self.remaining is not None or self.chunked
        )
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.chunked:
            async for piece in self._chunked():
                yield piece
        else:
            async for view in self._sized():
                yield view  # type: ignore[misc]  # a memoryview: bytes-like, never copied
        self.done = True

    async def _sized(self) -> AsyncIterator[memoryview]:
        while self.remaining is None or self.remaining > 0:
            want = self.chunk if self.remaining is None else min(self.chunk, self.remaining)
            view = await _read(self.conn, self.pool.buffers, want, self.timeout)
            if view is None:
                if self.remaining is None:
                    self.reusable = False
                    return  # a body delimited by the end of the connection
                msg = f"the connection closed with {self.remaining:,} bytes of the body missing"
                raise httpx.RemoteProtocolError(msg)
            if self.remaining is not None:
                self.remaining -= len(view)
            yield view

    async def _chunked(self) -> AsyncIterator[bytes]:
        conn, data = self.conn, bytearray()

        async def fill() -> None:
            view = await _read(conn, self.pool.buffers, 64 << 10, self.timeout)
            if view is None:
                msg = "the connection closed inside a chunked body"
                raise httpx.RemoteProtocolError(msg)
            data.extend(view)

        while True:
            while (line_end := data.find(b"\r\n")) < 0:
                await fill()
            size = int(bytes(data[:line_end]).split(b";")[0].strip() or b"0", 16)
            del data[: line_end + 2]
            if size == 0:
                while (end := data.find(b"\r\n\r\n")) < 0 and not data.startswith(b"\r\n"):
                    await fill()
                cut = 2 if data.startswith(b"\r\n") else end + 4
                conn.leftover = memoryview(bytes(data[cut:]))
                return
            while len(data) < size + 2:
                await fill()
            yield bytes(data[:size])
            del data[: size + 2]

    async def read_through(self, size: int, sink: BlockSink) -> int:
        """Up to ``size`` more bytes of a sized body, written by ``sink`` as they come.

        The fast path of a download: the connection's thread receives and writes buffer
        after buffer, and the loop hears once per call. Returns the count, 0 at the end.
        """
        assert self.remaining is not None  # a sized body (the extension is only set then)
        if self.remaining == 0:
            self.done = True
            sink.landed(None)
            return 0
        want = min(size, self.remaining)
        buffers, chunk = self.pool.buffers, self.chunk
        n = await _read_through(self.conn, buffers, want, self.timeout, sink, chunk)
        if n == 0:
            msg = f"the connection closed with {self.remaining:,} bytes of the body missing"
            raise httpx.RemoteProtocolError(msg)
        self.remaining -= n
        self.done = self.remaining == 0
        return n

    async def aclose(self) -> None:
        if self.done and self.reusable and self.conn.reusable():
            self.pool.give_back(self.conn)
        else:
            self.conn.close()


class WireTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections with zero-copy body reads, reused while the server allows."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.buffers = BufferPool()
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}

    def give_back(self, conn: _Connection) -> None:
        self.idle.setdefault(conn.key, []).append(conn)

    def _context(self) -> ssl.SSLContext:
        """The trust store httpx would use: SSL_CERT_FILE or SSL_CERT_DIR if set, else certifi.

        (A cluster behind a TLS-inspecting proxy or with its own CA sets one of those.)
        """
        if self.ssl_context is None:
            if os.environ.get("SSL_CERT_FILE"):
                context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                context = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi  # httpx's own dependency

                context = ssl.create_default_context(cafile=certifi.where())
            context.set_alpn_protocols(["http/1.1"])
            self.ssl_context = context
        return self.ssl_context

    async def _connect(self, url: httpx.URL, limit: float | None) -> _Connection:
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.host, port)
        idle = self.idle.get(key, [])
        while idle:
            conn = idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        conn = _Connection(key)
        secure = self._context() if scheme == "https" else None
        try:
            await conn.call(_open, conn, url.host, port, secure, limit or 3600.0)
        except TimeoutError as exc:
            conn.close()
            msg = f"could not connect to {url.host} in time"
            raise httpx.ConnectTimeout(msg) from exc
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            msg = f"{type(exc).__name__}: {exc}"
            raise httpx.ConnectError(msg) from exc
        return conn

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        conn = await self._connect(request.url, timeouts.get("connect"))
        try:
            body = await request.aread()
            lines = [request.method.encode() + b" " + request.url.raw_path + b" HTTP/1.1"]
            lines += [key + b": " + value for key, value in request.headers.raw]
            data = b"\r\n".join(lines) + b"\r\n\r\n" + body
            head = await conn.call(_exchange, conn, data, timeouts.get("read"))
        except _Abandoned as exc:
            raise httpx.ReadError(str(exc)) from exc
        except BaseException:
            conn.close()
            raise
        chunk = int(request.extensions.get(CHUNK_EXTENSION, CHUNK))
        stream = _Body(
            self, conn, head, timeout=timeouts.get("read"), chunk=chunk, method=request.method
        )
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if stream.remaining is not None and not stream.chunked:
            extensions[BODY_EXTENSION] = stream  # for readers that write as bytes arrive
        return httpx.Response(
            head.status, headers=head.headers, stream=stream, extensions=extensions
        )

    async def aclose(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


def make_transport() -> httpx.AsyncBaseTransport | None:
    """Our transport, or None (httpx's own) when the environment asks for a proxy."""
    if any(os.environ.get(name) for name in _PROXY_VARS):
        return None
    return WireTransport()
