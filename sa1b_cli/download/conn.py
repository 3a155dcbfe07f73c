"""One socket and the one thread that does its blocking calls: connect, TLS, send, receive.

(Over TLS, the steps before a body and the body's fast path run on the TLS threads instead,
see ``steps`` and ``reactor``: such a connection starts its thread only for a slow path.)

The event loop never blocks on the network: each call runs on the connection's thread and
its outcome comes back through a future, handed over in batches (``_Mailbox``). A thread
waits at most ``POLL`` seconds in one system call, so a closed connection or the end of
the program never waits on the network.

TLS is an ``SSLSocket`` with the ``ssl`` defaults (certificate and host name checked, SNI
sent); it hands over one 16 KiB record per receive (docs/performance.md: memory BIOs were
tried and were slower).
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import errno
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["POLL", "Abandoned", "BlockSink", "Connection", "Outcome", "open_connection", "post"]

POLL = 1.0  # seconds one blocking call may wait before it reports back

T = TypeVar("T")
Outcome = tuple[bool, Any]  # (True, the call's result) or (False, the exception it raised)


class BlockSink(Protocol):
    """Where a body's bytes go as they arrive (see ``wire._Body.read_through``)."""

    @property
    def file(self) -> object:
        """The file written to: one receiving thread writes it at a time (see wire)."""

    def room(self) -> int:
        """Bytes it still takes: read before each receive, as a tail split on the loop may
        lower it while a thread writes (then the thread stops there, and only the other
        connection fetches the rest)."""

    def write(self, view: memoryview) -> None:
        """Blocking, on the connection's thread; called once per buffer filled, in order."""

    def landed(self, error: OSError | None) -> None:
        """On the event loop, once ``write`` is over (or was not needed)."""


class Abandoned(OSError):
    """The connection was closed while its thread worked: nobody waits for the result."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNABORTED, "the connection was closed")


def _recv_tls(sock: ssl.SSLSocket, view: memoryview, *, wait_all: bool) -> int:
    """TLS hands over one record per call: loop (the GIL is released in each) for POLL at most."""
    got, deadline = 0, time.monotonic() + POLL
    while got < len(view) and time.monotonic() < deadline:
        try:
            n = sock.recv_into(view[got:])
        except TimeoutError:
            break
        if n == 0:
            return got  # the end: the next call returns 0
        got += n
        if not wait_all:
            break
    return got or -1


def _recv_raw(sock: socket.socket, view: memoryview, *, wait_all: bool) -> int:
    """The count, 0 at the end, -1 if nothing came within POLL seconds."""
    try:
        return sock.recv_into(view, len(view), socket.MSG_WAITALL if wait_all else 0)
    except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO passed with nothing received
        return -1


class Connection:
    """One socket and the one thread that does its blocking calls, one call at a time.

    The event loop never touches the socket while a call runs; ``close`` from the loop
    shuts it down (which wakes a blocked receive) and the thread closes it once its call
    returns, so a file descriptor is never closed under a call that still uses it.
    """

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.sock: socket.socket | None = None
        self.tls = False
        self.closed = False  # the peer ended the stream, or we closed the connection
        self._abandoned = False
        self._busy = False
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Any] | None]
        self._calls = queue.SimpleQueue()
        self.ident: int | None = None  # the thread's, once it runs (tests check who wrote)
        self._started = False  # the thread starts with the first call (TLS makes none, mostly)

    async def call(
        self, fn: Callable[..., T], *args: Any, settled: Callable[[Outcome], None] | None = None
    ) -> T:
        """Run ``fn(*args)`` on this connection's thread; cancelling closes the connection.

        ``settled`` runs on the loop with the outcome once the thread is done, even when
        the caller was cancelled meanwhile (what the thread did must still be accounted for).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._started:
            # Not threading.Thread: its start() waits, on the loop, until the new thread holds
            # the GIL. A raw thread is a daemon too: one waiting on the network never holds up
            # the exit.
            _thread.start_new_thread(self._serve, ())
            self._started = True
        self._calls.put((fn, args, (future, settled, _Mailbox.of(loop))))
        try:
            return await future
        except asyncio.CancelledError:
            self.close()  # the call may still be receiving: nothing else may use the socket
            raise

    def reply_to(self, future: asyncio.Future[Any], settled: Any) -> tuple[Any, Any, Any]:
        """Where a call's outcome goes (on the loop's thread), for a call run elsewhere."""
        return (future, settled, _Mailbox.of(future.get_loop()))

    def lend(self) -> bool:
        """Mark the socket in use by another thread (the TLS reactor); False once closed."""
        with self._lock:
            if self._abandoned:
                return False
            self._busy = True
            return True

    def restore(self) -> None:
        """The other thread is done with the socket (closed now, if a close came meanwhile)."""
        with self._lock:
            self._busy = False
            if self._abandoned:
                self._close_socket()

    def _serve(self) -> None:
        self.ident = threading.get_ident()
        while (item := self._calls.get()) is not None:
            fn, args, (future, settled, mailbox) = item
            with self._lock:
                self._busy = not self._abandoned
            try:
                if not self._busy:
                    raise Abandoned
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
        if self.closed or self.sock is None:
            return False
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    # -- blocking steps, run on the connection's thread ------------------------------------

    def session(self) -> ssl.SSLSession | None:
        """The TLS session to resume on the next connection to this host (a short handshake)."""
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.session
        return None

    def sendall(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def recv_into(self, view: memoryview, *, wait_all: bool) -> int:
        """Fill ``view`` (or take what comes first): the count, 0 at the end, -1 if none.

        Raises ``OSError`` (and ``ssl.SSLError``, one of them) as the socket does.
        """
        assert self.sock is not None
        if isinstance(self.sock, ssl.SSLSocket):
            return _recv_tls(self.sock, view, wait_all=wait_all)
        return _recv_raw(self.sock, view, wait_all=wait_all)


def open_connection(
    conn: Connection,
    host: str,
    port: int,
    limit: float,
) -> None:
    """On the connection's thread: connect in slices of POLL seconds, so a close stops it.

    Plain HTTP only: a TLS connection opens on a TLS thread (``steps.Opening``)."""
    deadline = time.monotonic() + limit
    error: Exception | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        conn.sock = sock
        try:
            _connect(conn, sock, address, deadline)
            break
        except (OSError, Abandoned) as exc:
            sock.close()
            error = exc
            if isinstance(exc, (Abandoned, TimeoutError)):
                raise
    else:
        raise error or OSError(f"no address for {host}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Blocking, with kernel timeouts: one recv(MSG_WAITALL) then fills a whole block.
    sock.setblocking(True)
    timeval = struct.pack("ll", int(POLL), int(POLL % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _connect(conn: Connection, sock: socket.socket, address: Any, deadline: float) -> None:
    sock.setblocking(False)
    code = sock.connect_ex(address)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    waiting = code in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)
    while waiting and not poller.poll(POLL * 1000):
        if conn.closed:
            raise Abandoned
        if time.monotonic() >= deadline:
            raise TimeoutError
    if not waiting and code != 0:
        raise OSError(code, os.strerror(code))
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


def post(reply: tuple[Any, Any, Any], outcome: Outcome) -> None:
    """Hand ``outcome`` to the loop, as a connection's thread does (see ``reply_to``)."""
    future, settled, mailbox = reply
    mailbox.post((future, outcome, settled))


class _Mailbox:
    """Outcomes from the connection threads, handed to the loop in batches.

    ``call_soon_threadsafe`` writes to the loop's self-pipe on every call: a system call
    on the thread and a wake-up of the loop for each outcome. Here only the first outcome
    of a batch does that; the others join the queue the loop is about to empty.
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
        if not future.cancelled():
            ok, value = outcome
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
