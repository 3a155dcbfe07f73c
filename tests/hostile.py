"""A hostile HTTP server on 127.0.0.1 for end-to-end tests: one named misbehaviour per path.

``/b/<behaviour>/<name>`` serves ``name`` as that behaviour does; ``/b/good/<name>`` serves it
right (206 to a Range, keep-alive). The server runs its own event loop in a thread, so the
installed ``sa1b`` can be pointed at it from a subprocess. Requests are read by hand here:
this is the test's server, not sa1b's parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

__all__ = ["BEHAVIOURS", "DATA", "HostileServer", "Req"]

DATA = {f"sa_{k:06d}.tar": random.Random(k).randbytes(300_000) for k in range(2)}
PROBE_TOTAL = 7_127  # what the size-changing server says first


@dataclass
class Req:
    behaviour: str
    name: str
    start: int
    end: int | None  # inclusive, as in the header
    ranged: bool
    port: int
    query: str
    scheme: str  # the server's: http, or https

    @property
    def probe(self) -> bool:
        return self.ranged and self.start == 0 and self.end == 0


Writer = asyncio.StreamWriter
Behaviour = Callable[[Req, Writer], Awaitable[bool]]  # True: the connection may serve another


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _answer(
    req: Req, data: bytes, extra: list[tuple[str, str]] | None = None
) -> tuple[bytes, bytes]:
    """A correct answer's head and body for the range asked."""
    if not req.ranged:
        return _head("200 OK", [("Content-Length", str(len(data))), *(extra or [])]), data
    last = min(len(data) - 1, req.end if req.end is not None else len(data) - 1)
    body = data[req.start : last + 1]
    headers = [("Content-Range", f"bytes {req.start}-{last}/{len(data)}")]
    headers += [("Content-Length", str(len(body))), *(extra or [])]
    return _head("206 Partial Content", headers), body


async def good(req: Req, w: Writer) -> bool:
    head, body = _answer(req, DATA[req.name])
    w.write(head + body)
    return True


def _raw(reply: bytes) -> Behaviour:
    async def serve(req: Req, w: Writer) -> bool:
        w.write(reply)
        return False

    return serve


def _probe_then(then: Behaviour) -> Behaviour:
    """Answer the one-byte size probe right, then misbehave."""

    async def serve(req: Req, w: Writer) -> bool:
        if req.probe:
            return await good(req, w)
        return await then(req, w)

    return serve


def _chunked(first_line: bytes) -> Behaviour:
    async def serve(req: Req, w: Writer) -> bool:
        w.write(_head("200 OK", [("Transfer-Encoding", "chunked")]) + first_line)
        return False

    return serve


async def chunk_too_big(req: Req, w: Writer) -> bool:
    data = DATA[req.name] + b"J" * 4000
    head = _head("200 OK", [("Transfer-Encoding", "chunked")])
    w.write(head + f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")
    return False


async def interim_flood(req: Req, w: Writer) -> bool:
    w.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 1000)
    return await good(req, w)


async def slow_head(req: Req, w: Writer) -> bool:
    head, _ = _answer(req, DATA[req.name])
    for byte in head:
        w.write(bytes([byte]))
        await w.drain()
        await asyncio.sleep(0.5)
    return False


async def longer_body(req: Req, w: Writer) -> bool:
    head, body = _answer(req, DATA[req.name])
    w.write(head + body + b"junk past the declared length" * 10)
    return False


async def shorter_body(req: Req, w: Writer) -> bool:
    head, body = _answer(req, DATA[req.name])
    w.write(head + body[: len(body) // 2])
    return False


async def size_changes(req: Req, w: Writer) -> bool:
    if req.probe:
        headers = [("Content-Range", f"bytes 0-0/{PROBE_TOTAL}"), ("Content-Length", "1")]
        w.write(_head("206 Partial Content", headers) + DATA[req.name][:1])
        return True
    big = DATA[req.name][:1000] * 64  # 62.5 KiB where 6.96 KiB was said
    w.write(_head("200 OK", [("Content-Length", str(len(big)))]) + big)
    return False


def _redirect(location: Callable[[Req], str]) -> Behaviour:
    async def serve(req: Req, w: Writer) -> bool:
        w.write(_head("302 Found", [("Location", location(req)), ("Content-Length", "0")]))
        return True

    return serve


def _hop(req: Req) -> str:
    hop = int(parse_qs(req.query).get("hop", ["0"])[0]) + 1
    return f"/b/redirect_chain/{req.name}?hop={hop}&oh=HOPSECRET"


async def hangup_near_end(req: Req, w: Writer) -> bool:
    head, body = _answer(req, DATA[req.name])
    ends_at_the_end = req.end is None or req.end >= len(DATA[req.name]) - 1
    w.write(head + (body[:-1200] if ends_at_the_end else body))
    return not ends_at_the_end


async def silence(req: Req, w: Writer) -> bool:
    if req.probe:
        return await good(req, w)
    head, _ = _answer(req, DATA[req.name])
    w.write(head)
    await w.drain()
    await asyncio.sleep(3600)
    return False


async def trickle(req: Req, w: Writer) -> bool:
    """A byte now and then, never silent for long: 200 B/s, under sa1b's 1 KiB/s floor."""
    if req.probe:
        return await good(req, w)
    head, body = _answer(req, DATA[req.name])
    w.write(head)
    for at in range(0, len(body), 100):
        w.write(body[at : at + 100])
        await w.drain()
        await asyncio.sleep(0.5)
    return False


async def encoded(req: Req, w: Writer) -> bool:
    """The file gzip-compressed, though asked for as it is (``Accept-Encoding: identity``)."""
    packed = gzip.compress(DATA[req.name], mtime=0)
    headers = [("Content-Encoding", "gzip"), ("Content-Length", str(len(packed)))]
    w.write(_head("200 OK", headers) + packed)
    return False


HUGE = 10**15  # bytes: 909.5 TiB, which no disk here has free


async def huge_size(req: Req, w: Writer) -> bool:
    """The size probe says 909.5 TiB (and a GET would too)."""
    headers = [("Content-Range", f"bytes 0-0/{HUGE}"), ("Content-Length", "1")]
    w.write(_head("206 Partial Content", headers) + b"x")
    return False


async def huge_length(req: Req, w: Writer) -> bool:
    """No size for the probe; the GET then says 909.5 TiB, and sends a little."""
    if req.probe:
        w.write(_head("500 Internal Server Error", [("Content-Length", "0")]))
        return False
    w.write(_head("200 OK", [("Content-Length", str(HUGE))]) + b"x" * 1000)
    return False


BEHAVIOURS: dict[str, Behaviour] = {
    "good": good,
    "bad_status": _raw(b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n"),
    "no_colon": _raw(b"HTTP/1.1 200 OK\r\nContent-Length 5\r\n\r\nhello"),
    "long_bad_line": _raw(b"HTTP/1.1 200 OK\r\n" + b"x" * 10_000 + b"\r\n\r\n"),
    "two_lengths": _raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    "length_and_chunked": _raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk_negative": _probe_then(_chunked(b"-5\r\nhello\r\n0\r\n\r\n")),
    "chunk_not_hex": _probe_then(_chunked(b"zz\r\nhello\r\n0\r\n\r\n")),
    "chunk_extension": _probe_then(
        _chunked(b"5;" + b"x" * (100 << 10) + b"\r\nhello\r\n0\r\n\r\n")
    ),
    "chunk_too_big": _probe_then(chunk_too_big),
    "interim_flood": interim_flood,
    "switch_protocols": _raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
    "huge_head": _raw(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 << 10) + b"\r\n\r\n"),
    "slow_head": slow_head,
    "longer_body": longer_body,
    "shorter_body": shorter_body,
    "size_changes": size_changes,
    "redirect_loop": _redirect(lambda r: f"/b/redirect_loop/{r.name}?{r.query}"),
    "redirect_chain": _redirect(_hop),
    "redirect_file": _redirect(lambda r: "file:///etc/passwd"),
    "redirect_bad_host": _redirect(lambda r: "http://[bad/x?oh=BADSECRET"),
    "redirect_bad_name": _redirect(lambda r: "http://xn--a.example/x?oh=BADSECRET"),
    "redirect_empty_label": _redirect(lambda r: "http://a..b/x?oh=BADSECRET"),
    "redirect_host": _redirect(
        lambda r: f"{r.scheme}://localhost:{r.port}/b/good/{r.name}?oh=REDIRECTSECRET&oe=7FFFFFFF"
    ),
    "forbidden_escapes": _raw(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 32\r\n\r\n\x1b[2J\x1b[31mgone\nerror: forged line"
    ),
    "hangup_near_end": hangup_near_end,
    "silence": silence,
    "trickle": trickle,
    "empty": _raw(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    "empty_range": _raw(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */0\r\n\r\n"),
    "encoded": encoded,
    "huge_size": huge_size,
    "huge_length": huge_length,
    "odd_digit": _raw(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/\u00b2\r\n"
        "Content-Length: 1\r\n\r\nx".encode("latin-1")
    ),
}


class HostileServer:
    """Serves BEHAVIOURS on 127.0.0.1 from a thread; counts requests per (behaviour, name).

    Over TLS when given a server context (``cafile``: the certificate a client must trust).
    """

    def __init__(self, tls: ssl.SSLContext | None = None, cafile: Path | None = None) -> None:
        self.tls, self.cafile = tls, cafile
        self.scheme = "https" if tls else "http"
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.requests: dict[tuple[str, str], int] = {}
        self.writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, behaviour: str, name: str) -> str:
        query = "_nc_gid&ccb=10-5&oh=00_SECRETSIG&oe=7FFFFFFF&_nc_sid=0fdd"
        return f"{self.scheme}://127.0.0.1:{self.port}/b/{behaviour}/{name}?{query}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        # Shut down whole: no socket or task is left for the collector to find later.
        server.close()
        for writer in list(self.writers):
            writer.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, w: Writer) -> None:
        self.writers.add(w)
        try:
            await self._serve(reader, w)
        finally:
            self.writers.discard(w)
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, w: Writer) -> None:
        with contextlib.suppress(
            ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError
        ):
            while (req := await self._read(reader)) is not None:
                key = (req.behaviour, req.name)
                self.requests[key] = self.requests.get(key, 0) + 1
                keep = await BEHAVIOURS[req.behaviour](req, w)
                await w.drain()
                if not keep:
                    break

    async def _read(self, reader: asyncio.StreamReader) -> Req | None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = raw.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        path, _, query = target.partition("?")
        _, _, behaviour, name = path.split("/", 3)
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
        }
        start, end, ranged = 0, None, "range" in fields
        if ranged:
            first, _, last = fields["range"].removeprefix("bytes=").partition("-")
            start, end = int(first), (int(last) if last else None)
        return Req(behaviour, name, start, end, ranged, self.port, query, self.scheme)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def serving() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server
