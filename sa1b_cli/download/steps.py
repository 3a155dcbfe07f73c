"""A TLS connection's steps before its body, non-blocking, run by the TLS threads (reactor.py).

``Opening`` connects and shakes hands; ``Exchanging`` sends a request and reads its final
head (through ``heads.HeadReader``, as the blocking path does). A thread per connection
for these, as plain HTTP has, cost CPU in GIL hand-offs while other connections received
(docs/performance.md): here they are a few calls on the threads already receiving.

Each ``advance`` does what it can without waiting and returns the selector events to wait
for, or 0 once done (then ``result`` is ready); it raises on failure. The reactor ends a
step at its ``deadline`` with ``expired()``.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
from collections.abc import Sequence
from typing import Any, Protocol

import h11
import httpx

from sa1b_cli.download.conn import Connection
from sa1b_cli.download.heads import HEAD_READ, Head, HeadReader, framing

__all__ = ["Exchanging", "Opening", "Step"]

_WAITING = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
Address = tuple[int, int, int, str, Any]  # as getaddrinfo gives them


class Step(Protocol):
    deadline: float  # time.monotonic() past which the step has failed

    def advance(self) -> int:
        """Go as far as the socket allows: the events to wait for, 0 when done."""

    def result(self) -> Any:
        """What the step came to (once ``advance`` returned 0)."""

    def expired(self) -> Exception:
        """The error for a step that reached its deadline."""


class Opening:
    """Connect to each address in turn, then shake hands; ``conn.sock`` is the socket."""

    def __init__(
        self,
        conn: Connection,
        addresses: Sequence[Address],
        host: str,
        context: ssl.SSLContext,
        session: ssl.SSLSession | None,
        deadline: float,
    ) -> None:
        self.conn, self.addresses, self.host = conn, list(addresses), host
        self.context, self.session, self.deadline = context, session, deadline
        self.connecting = False
        self.error: OSError | None = None

    def advance(self) -> int:
        sock = self.conn.sock
        if isinstance(sock, ssl.SSLSocket):
            return _handshake(sock)
        if self.connecting and sock is not None:
            self.connecting = False
            if code := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                sock.close()
                self.error = OSError(code, os.strerror(code))
            else:
                return self._wrap(sock)
        return self._connect_next()

    def _connect_next(self) -> int:
        while self.addresses:
            family, kind, proto, _, address = self.addresses.pop(0)
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:  # (a family this machine does not have): the next address
                self.error = exc
                continue
            self.conn.sock = sock
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in _WAITING:
                self.connecting = True
                return WRITE
            if code == 0:
                return self._wrap(sock)
            sock.close()
            self.error = OSError(code, os.strerror(code))
        raise self.error or OSError(f"no address for {self.host}")

    def _wrap(self, sock: socket.socket) -> int:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        secure = self.context.wrap_socket(
            sock, server_hostname=self.host, do_handshake_on_connect=False, session=self.session
        )
        self.conn.sock, self.conn.tls = secure, True
        return _handshake(secure)

    def result(self) -> None:
        return None

    def expired(self) -> Exception:
        return TimeoutError()  # the transport names the host


def _handshake(sock: ssl.SSLSocket) -> int:
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return READ
    except ssl.SSLWantWriteError:
        return WRITE
    return 0


class Exchanging:
    """Send a request's bytes, then read until h11 has the final head."""

    def __init__(
        self, conn: Connection, data: bytes, parser: h11.Connection, method: bytes, deadline: float
    ) -> None:
        self.conn, self.unsent, self.method, self.deadline = conn, data, method, deadline
        self.reader = HeadReader(parser)
        self.head: Head | None = None

    def advance(self) -> int:
        sock: ssl.SSLSocket = self.conn.sock  # type: ignore[assignment]  # (opened by Opening)
        if sock.gettimeout() != 0.0:  # between calls, a connection's socket waits POLL at most
            sock.setblocking(False)
        return self._send(sock) or self._read_head(sock)

    def _send(self, sock: ssl.SSLSocket) -> int:
        while self.unsent:
            try:
                self.unsent = self.unsent[sock.send(self.unsent) :]
            except ssl.SSLWantWriteError:
                return WRITE
            except ssl.SSLWantReadError:
                return READ
            except OSError as exc:
                msg = f"{type(exc).__name__}: {exc}"
                raise httpx.WriteError(msg) from exc
        return 0

    def _read_head(self, sock: ssl.SSLSocket) -> int:
        while (event := self.reader.event()) is None:
            try:
                data = sock.recv(min(self.reader.room(), HEAD_READ))
            except ssl.SSLWantReadError:
                return READ
            except ssl.SSLWantWriteError:
                return WRITE
            except ssl.SSLEOFError:  # closed without close_notify: an end, as recv says
                data = b""
            except OSError as exc:
                msg = f"{type(exc).__name__}: {exc}"
                raise httpx.ReadError(msg) from exc
            self.reader.feed(data)
        self.head = framing(self.reader.parser, event, self.method)
        return 0

    def result(self) -> Head:
        assert self.head is not None
        return self.head

    def expired(self) -> Exception:
        return HeadReader.timeout()
