"""An httpx transport for large HTTP/1.1 bodies: the kernel writes straight into our buffers.

httpx stays the client API (requests, redirects, timeouts, exceptions); only the bytes on
the wire go another way. httpcore hands every read through anyio, h11's receive buffer
(two copies) and several generator layers: measured here, a bare httpx stream costs
1.8-5 CPU s/GiB (more when a rate-capped CDN sends small bursts), while an asyncio
``BufferedProtocol`` reading into large buffers costs 0.3-0.4. Body chunks are memoryviews
of those buffers, handed on without a copy (``pwritev`` and the hashers take them as they
are). Request targets are sent byte for byte (a signed query must not be re-encoded).

Scope: HTTP/1.1 over TCP or TLS, Content-Length, chunked or close-delimited bodies,
keep-alive reuse. Proxies are not handled here: ``make_transport`` returns httpx's own
transport when a proxy is configured in the environment.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator

import httpx

__all__ = ["WireTransport", "make_transport"]

BUFFER = 256 << 10
MIN_ROOM = 32 << 10
PAUSE_ABOVE = 256 << 10  # bytes queued for the reader before the socket is paused
_HEAD_LIMIT = 64 << 10
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class BufferPool:
    """Receive buffers reused once nothing refers to them any more.

    A new 256 KiB bytearray costs a zero-fill and its page faults (8% of a download's CPU,
    measured with py-spy). A buffer whose views are all gone can be taken again: CPython
    refuses to resize a bytearray while a view of it exists, which is the test used here.
    """

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self.spare: deque[bytearray] = deque()

    def take(self) -> bytearray:
        # The oldest spare is the likeliest to be free; probing every one would cost more
        # (a raised BufferError each) than the allocation it saves.
        for _ in range(min(2, len(self.spare))):
            buffer = self.spare.popleft()
            try:
                buffer.append(0)  # raises BufferError while a view of it is alive
            except BufferError:
                self.spare.append(buffer)
                continue
            del buffer[-1]
            return buffer
        return bytearray(BUFFER)

    def give(self, buffer: bytearray) -> None:
        if len(self.spare) < self.keep:
            self.spare.append(buffer)


class _Wire(asyncio.BufferedProtocol):
    """One connection: bytes land in a large buffer; readers get views of what arrived."""

    def __init__(self, pool: BufferPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = pool.take()
        self.filled = 0  # bytes of ``buffer`` written by the kernel
        self.taken = 0  # bytes of ``buffer`` already handed to ``queue``
        self.queue: deque[memoryview] = deque()
        self.queued = 0
        self.closed = False
        self.error: BaseException | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buffer) - self.filled < MIN_ROOM:
            self._publish()
            # Views of the old buffer may still be queued or being written: the pool only
            # hands it out again once they are all gone.
            self.pool.give(self.buffer)
            self.buffer = self.pool.take()
            self.filled = self.taken = 0
        return memoryview(self.buffer)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        self._publish()
        if self.queued > PAUSE_ABOVE and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _publish(self) -> None:
        if self.filled > self.taken:
            self.queue.append(memoryview(self.buffer)[self.taken : self.filled])
            self.queued += self.filled - self.taken
            self.taken = self.filled

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def read(self, limit: float | None) -> memoryview | None:
        """The next bytes that arrived, or None at the end of the stream."""
        while not self.queue:
            if self.closed:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(limit):
                    await self.waiter
            except TimeoutError as exc:
                msg = "no data before the read timeout"
                raise httpx.ReadTimeout(msg) from exc
            finally:
                self.waiter = None
        view = self.queue.popleft()
        self.queued -= len(view)
        if self.paused and self.queued < PAUSE_ABOVE // 4 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return view

    def unread(self, view: memoryview) -> None:
        if view:
            self.queue.appendleft(view)
            self.queued += len(view)


class _Connection:
    def __init__(self, key: tuple[str, str, int], wire: _Wire) -> None:
        self.key, self.wire = key, wire

    @property
    def usable(self) -> bool:
        return not self.wire.closed and self.wire.transport is not None

    def close(self) -> None:
        if self.wire.transport is not None:
            self.wire.transport.close()


class _Head:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, headers

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.strip()
        return None


async def _read_head(wire: _Wire, limit: float | None) -> _Head:
    data = bytearray()
    while True:
        view = await wire.read(limit)
        if view is None:
            msg = "the server closed the connection before a response"
            raise httpx.RemoteProtocolError(msg)
        start = max(0, len(data) - 3)
        data += view
        end = data.find(b"\r\n\r\n", start)
        if end >= 0:
            wire.unread(memoryview(bytes(data[end + 4 :])))
            head = _parse_head(bytes(data[:end]))
            if 100 <= head.status < 200:  # 100 Continue and friends: read the next head
                data = bytearray()
                continue
            return head
        if len(data) > _HEAD_LIMIT:
            msg = "response headers are too large"
            raise httpx.RemoteProtocolError(msg)


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


class _Body(httpx.AsyncByteStream):
    """The response body as views of the connection's buffers; gives the connection back."""

    def __init__(
        self,
        pool: WireTransport,
        conn: _Connection,
        head: _Head,
        timeout: float | None,
        *,
        method: str,
    ) -> None:
        self.pool, self.conn, self.timeout = pool, conn, timeout
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
        wire = self.conn.wire
        while self.remaining is None or self.remaining > 0:
            view = await wire.read(self.timeout)
            if view is None:
                if self.remaining is None:
                    self.reusable = False
                    return  # a body delimited by the end of the connection
                msg = f"the connection closed with {self.remaining:,} bytes of the body missing"
                raise httpx.RemoteProtocolError(msg) from wire.error
            if self.remaining is not None and len(view) > self.remaining:
                wire.unread(view[self.remaining :])
                view = view[: self.remaining]
            if self.remaining is not None:
                self.remaining -= len(view)
            yield view

    async def _chunked(self) -> AsyncIterator[bytes]:
        wire, data = self.conn.wire, bytearray()

        async def fill() -> None:
            view = await wire.read(self.timeout)
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
                wire.unread(memoryview(bytes(data[cut:])))
                return
            while len(data) < size + 2:
                await fill()
            yield bytes(data[:size])
            del data[: size + 2]

    async def aclose(self) -> None:
        if self.done and self.reusable and self.conn.usable and not self.conn.wire.queue:
            self.pool.give_back(self.conn)
        else:
            self.conn.close()


class WireTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections with zero-copy body reads, reused while the server allows."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.buffers = BufferPool()

    def give_back(self, conn: _Connection) -> None:
        self.idle.setdefault(conn.key, []).append(conn)

    def _context(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            import certifi  # httpx's own dependency: the same trust store httpx would use

            self.ssl_context = ssl.create_default_context(cafile=certifi.where())
            self.ssl_context.set_alpn_protocols(["http/1.1"])
        return self.ssl_context

    async def _connect(self, url: httpx.URL, limit: float | None) -> _Connection:
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.host, port)
        idle = self.idle.get(key, [])
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
        loop = asyncio.get_running_loop()
        secure = self._context() if scheme == "https" else None
        try:
            async with asyncio.timeout(limit):
                _, wire = await loop.create_connection(
                    lambda: _Wire(self.buffers),
                    url.host,
                    port,
                    ssl=secure,
                    server_hostname=url.host if secure else None,
                )
        except TimeoutError as exc:
            msg = f"could not connect to {url.host} in time"
            raise httpx.ConnectTimeout(msg) from exc
        except (OSError, ssl.SSLError) as exc:
            msg = f"{type(exc).__name__}: {exc}"
            raise httpx.ConnectError(msg) from exc
        return _Connection(key, wire)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        conn = await self._connect(request.url, timeouts.get("connect"))
        try:
            body = await request.aread()
            head = [request.method.encode() + b" " + request.url.raw_path + b" HTTP/1.1"]
            head += [key + b": " + value for key, value in request.headers.raw]
            assert conn.wire.transport is not None
            conn.wire.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
            response_head = await _read_head(conn.wire, timeouts.get("read"))
        except BaseException:
            conn.close()
            raise
        stream = _Body(self, conn, response_head, timeouts.get("read"), method=request.method)
        return httpx.Response(
            response_head.status,
            headers=response_head.headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1"},
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
