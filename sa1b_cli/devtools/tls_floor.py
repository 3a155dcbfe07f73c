"""What plain Python costs to receive HTTPS, for `make bench`: aria2c's way, and nothing more.

``python -m sa1b_cli.devtools.tls_floor URLS OUT``: each file named in URLS is cut into 16
ranges, all fetched at once on connections of their own, spread over two threads. Each
thread is a selector loop, as aria2c's one thread is: a non-blocking handshake, the
request, the head through h11, then every 16 KiB record read straight into a 256 KiB
buffer, written at its offset when full. No event loop, no controller, no hashing, no
retry: any failure ends the run with an error. The bench runs it beside sa1b and aria2c,
so that sa1b's HTTPS figures can be read against what the interpreter itself costs.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

import h11

__all__ = ["fetch_all", "main"]

PARTS = 16  # ranges a file, as aria2c -x16 -s16
THREADS = 2  # one per core here; sa1b receives TLS on two threads too
BUFFER = 256 << 10  # written when full: 1,000 writes a GiB
_RANGE = re.compile(rb"bytes (\d+)-(\d+)/(\d+)")


class FloorError(RuntimeError):
    """A response the floor does not take (it has no retries)."""


@dataclass(slots=True)
class _Range:
    """One range on one connection: handshake, request, head, body."""

    sock: ssl.SSLSocket
    request: bytes
    fd: int
    at: int  # where the next written byte goes
    left: int  # body bytes still to come
    step: str = "handshake"
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    buffer: memoryview = field(default_factory=lambda: memoryview(bytearray(BUFFER)))
    filled: int = 0


def _size(url: str, context: ssl.SSLContext) -> int:
    """The file's size, from a blocking HEAD."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    http = h11.Connection(h11.CLIENT)
    raw = socket.create_connection((host, port), timeout=30)
    with raw, context.wrap_socket(raw, server_hostname=host) as sock:
        sock.sendall(http.send(_request("HEAD", parts.netloc, parts.path)) or b"")
        while (event := http.next_event()) is h11.NEED_DATA:
            http.receive_data(sock.recv(65536))  # b"" at the end: h11 raises
    headers = dict(event.headers) if isinstance(event, h11.Response) else {}
    length = headers.get(b"content-length", b"")
    if not isinstance(event, h11.Response) or event.status_code != 200 or not length.isdigit():
        msg = f"HEAD {parts.path}: {event!r}"
        raise FloorError(msg)
    return int(length)


def _request(method: str, netloc: str, path: str, span: str = "") -> h11.Request:
    headers = [("Host", netloc), ("Accept-Encoding", "identity")]
    headers += [("Range", f"bytes={span}")] if span else []
    return h11.Request(method=method, target=path, headers=headers)


def _open(url: str, context: ssl.SSLContext, fd: int, start: int, end: int) -> _Range:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    raw = socket.create_connection((host, port), timeout=30)  # loopback: microseconds each
    raw.setblocking(False)
    sock = context.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
    piece = _Range(sock, b"", fd, start, end - start)
    request = _request("GET", parts.netloc, parts.path, f"{start}-{end - 1}")
    piece.request = piece.http.send(request) or b""
    return piece


def _advance(selector: selectors.BaseSelector, piece: _Range) -> bool:
    """Move the range on as far as the socket lets it; True once its body is written."""
    try:
        if piece.step == "handshake":
            piece.sock.do_handshake()
            piece.step = "request"
        while piece.step == "request":
            piece.request = piece.request[piece.sock.send(piece.request) :]
            if not piece.request:
                piece.step = "head"
                selector.modify(piece.sock, selectors.EVENT_READ, piece)
        if piece.step == "head":
            _read_head(piece)
        if piece.step == "body":
            return _read_body(piece)
    except ssl.SSLWantWriteError:
        selector.modify(piece.sock, selectors.EVENT_WRITE, piece)
    except ssl.SSLWantReadError:
        selector.modify(piece.sock, selectors.EVENT_READ, piece)
    return False


def _read_head(piece: _Range) -> None:
    """Feed h11 until the head is in; body bytes that came with it go to the buffer."""
    piece.http.receive_data(piece.sock.recv(65536))  # b"" at the end: h11 raises
    while (event := piece.http.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Response):
            _check(event, piece)
            piece.step = "body"
        elif isinstance(event, h11.Data):
            _take(piece, memoryview(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return
        elif not isinstance(event, h11.InformationalResponse):
            msg = f"a range from {piece.at}: {event!r}"
            raise FloorError(msg)


def _check(event: h11.Response, piece: _Range) -> None:
    headers = dict(event.headers)
    found = _RANGE.fullmatch(headers.get(b"content-range", b""))
    if event.status_code != 206 or not found or int(found[1]) != piece.at:
        msg = f"a range from {piece.at}: {event.status_code} {headers.get(b'content-range')!r}"
        raise FloorError(msg)
    length = headers.get(b"content-length")
    if int(found[2]) - int(found[1]) + 1 != piece.left or length != b"%d" % piece.left:
        msg = f"a range from {piece.at} of {piece.left} bytes: {found[0]!r}, length {length!r}"
        raise FloorError(msg)


def _take(piece: _Range, data: memoryview) -> None:
    piece.buffer[piece.filled : piece.filled + len(data)] = data
    piece.filled += len(data)
    piece.left -= len(data)


def _read_body(piece: _Range) -> bool:
    receive = piece.sock.recv_into
    while piece.left:
        room = min(BUFFER - piece.filled, piece.left)
        if not (n := receive(piece.buffer[piece.filled : piece.filled + room])):
            msg = f"the body from {piece.at} ended {piece.left} bytes short"
            raise FloorError(msg)
        piece.filled += n
        piece.left -= n
        if piece.filled == BUFFER:
            _flush(piece)
    if piece.filled:
        _flush(piece)
    return True


def _flush(piece: _Range) -> None:
    os.pwrite(piece.fd, piece.buffer[: piece.filled], piece.at)
    piece.at += piece.filled
    piece.filled = 0


def _serve(pieces: list[_Range], failed: list[BaseException]) -> None:
    """One thread's selector loop over its ranges, until each is written or one fails."""
    selector = selectors.DefaultSelector()
    for piece in pieces:
        selector.register(piece.sock, selectors.EVENT_WRITE, piece)
    try:
        while selector.get_map() and not failed:
            for key, _ in selector.select(1.0):
                if _advance(selector, key.data):
                    selector.unregister(key.fileobj)
                    key.data.sock.close()
    except (OSError, FloorError, h11.ProtocolError) as exc:
        failed.append(exc)
    finally:
        selector.close()


def fetch_all(urls: list[str], out: Path, context: ssl.SSLContext) -> None:
    """Fetch every URL into ``out`` (named after its path), PARTS ranges a file, at once."""
    pieces: list[_Range] = []
    fds = []
    try:
        for url in urls:
            size = _size(url, context)
            fd = os.open(out / Path(urlsplit(url).path).name, os.O_WRONLY | os.O_CREAT, 0o644)
            fds.append(fd)
            cuts = [size * k // PARTS for k in range(PARTS + 1)]
            pieces += [_open(url, context, fd, a, b) for a, b in pairwise(cuts) if b > a]
        failed: list[BaseException] = []
        threads = [
            threading.Thread(target=_serve, args=(pieces[k::THREADS], failed))
            for k in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failed:
            raise FloorError(str(failed[0])) from failed[0]
    finally:
        for piece in pieces:
            piece.sock.close()
        for fd in fds:
            os.close(fd)


def main(argv: list[str]) -> int:
    urls = [u for u in Path(argv[0]).read_text().split() if u]
    try:
        fetch_all(urls, Path(argv[1]), ssl.create_default_context())
    except (OSError, FloorError, h11.ProtocolError) as exc:
        print(f"tls_floor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
