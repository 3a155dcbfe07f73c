"""A thread that receives the bodies of many TLS connections: few GIL hand-offs between them.

Python's ``ssl`` decrypts one 16 KiB record per call and gives the GIL up around each. With
a thread per connection, dozens of threads then hand the GIL back and forth for every
record; a few threads, each serving many connections, contend far less. So a TLS body's
reads run here, on non-blocking sockets behind a selector: record after record into the
caller's buffer, each full buffer handed to ``sink.write`` on this thread, and the outcome
posted to the event loop once per call, as a connection's own thread would. (The transport
runs two of these; see ``WireTransport.receiver``.)
A TLS connection's steps before its bodies (connect, handshake, each request and its
head) run here too, as non-blocking ``steps``: a TLS connection has no thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sa1b_cli.download.conn import POLL, Abandoned, BlockSink, Connection, Outcome, post
from sa1b_cli.download.steps import Step

__all__ = ["TlsReactor"]

BUDGET = 0.05  # seconds a call keeps receiving before it reports progress to the loop


@dataclass(slots=True)
class _Job:
    conn: Connection
    sock: ssl.SSLSocket
    view: memoryview
    total: int
    sink: BlockSink
    limit: float | None
    reply: tuple[asyncio.Future[Any], Any, Any]  # (future, settled, mailbox), as Connection.call
    got: int = 0  # bytes written by the sink
    filled: int = 0  # bytes in the buffer, not yet written
    started: float = 0.0  # when the thread took the call up (``_adopt`` sets both)
    heard: float = 0.0  # when a byte last came


@dataclass(slots=True)
class _Setup:
    """A step of a connection before its body (``steps``), run until done or expired."""

    conn: Connection
    step: Step
    reply: tuple[asyncio.Future[Any], Any, Any]
    watched: socket.socket | None = None  # the socket the selector watches for it


_Jobs = dict[int, _Job | _Setup]  # by id: the jobs whose sockets the selector watches
_Action = Callable[[selectors.BaseSelector, _Jobs, Any], None]


class TlsReactor:
    """Receives TLS bodies for the connections of a transport, on one thread of its own."""

    def __init__(self, name: str = "sa1b-tls") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._new: list[_Job | _Setup] = []
        self._steps = 0  # setup steps under way (read and written on the loop)
        self._wake: tuple[socket.socket, socket.socket] | None = None  # made with the thread
        self._closing = False
        self._cpu = 0.0  # written by the thread, read by the controller
        # The files of the calls under way, by their sinks (read and written on the loop).
        self.files: Counter[object] = Counter()

    def used_cpu(self) -> float:
        """CPU seconds its thread has used so far (the controller reads its load)."""
        return self._cpu

    def calls(self) -> int:
        """Calls under way."""
        return self.files.total() + self._steps

    def close(self) -> None:
        """Let the thread end (once the jobs under way are over) and free its sockets."""
        with self._lock:
            self._closing = True
            if self._wake is not None:
                self._wake[1].send(b"x")

    async def receive_through(
        self,
        conn: Connection,
        view: memoryview,
        total: int,
        sink: BlockSink,
        limit: float | None,
        *,
        filled: int = 0,
        settled: Any,
    ) -> tuple[int, OSError | None]:
        """As ``_receive_through`` on the connection's thread, the buffer's first ``filled``
        bytes (they came with the head) written with the rest; cancelling closes the
        connection."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, OSError | None]] = loop.create_future()
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        reply = conn.reply_to(future, settled)
        self._submit(_Job(conn, sock, view, total, sink, limit, reply, filled=filled))
        self.files[sink.file] += 1
        try:
            return await future
        except asyncio.CancelledError:
            conn.close()  # the job sees the socket shut down and ends; nobody waits for it
            raise
        finally:
            self.files[sink.file] -= 1
            if not self.files[sink.file]:
                del self.files[sink.file]

    async def run(self, conn: Connection, step: Step) -> Any:
        """Run ``step`` to its end on this thread: its result; cancelling closes the connection."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Setup(conn, step, conn.reply_to(future, None)))
        self._steps += 1
        try:
            return await future
        except asyncio.CancelledError:
            conn.close()
            raise
        finally:
            self._steps -= 1

    def _submit(self, job: _Job | _Setup) -> None:
        if not job.conn.lend():
            post(job.reply, (False, Abandoned()))
            return
        with self._lock:
            self._new.append(job)
            if self._wake is None:
                self._wake = socket.socketpair()
                self._wake[0].setblocking(False)
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
            self._wake[1].send(b"x")

    def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        selector = selectors.DefaultSelector()
        selector.register(wake, selectors.EVENT_READ)
        jobs: _Jobs = {}
        error: Exception = Abandoned()  # for a call that came as the thread ended
        try:
            self._serve(selector, jobs, wake)
        except Exception as exc:  # a bug here must fail the calls, not leave them waiting
            error = exc
        with self._lock:  # a call after this starts a new thread
            late, self._new = self._new, []
            for end in self._wake:
                end.close()
            self._wake = None
        for job in [*jobs.values(), *late]:
            jobs[id(job)] = job
            self._end(selector, jobs, job, (False, error))
        selector.close()

    def _serve(self, selector: selectors.BaseSelector, jobs: _Jobs, wake: socket.socket) -> None:
        while not (self._closing and not jobs and not self._new):
            for key, _ in selector.select(POLL / 4):
                if key.fileobj is wake:
                    self._take_new(selector, jobs, wake)
                elif isinstance(key.data, _Setup):
                    self._safely(self._advance, selector, jobs, key.data)
                else:
                    self._safely(self._pump, selector, jobs, key.data)
            for job in list(jobs.values()):
                check = self._expire if isinstance(job, _Setup) else self._check
                self._safely(check, selector, jobs, job)
            self._cpu = time.thread_time()

    def _take_new(self, selector: selectors.BaseSelector, jobs: _Jobs, wake: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            while wake.recv(4096):
                pass
        with self._lock:
            new, self._new = self._new, []
        for job in new:
            jobs[id(job)] = job
            self._safely(
                self._advance if isinstance(job, _Setup) else self._adopt, selector, jobs, job
            )

    def _safely(
        self, action: _Action, selector: selectors.BaseSelector, jobs: _Jobs, job: _Job | _Setup
    ) -> None:
        """One action on one job; an error it raises (a step's failure, or a bug) fails that
        call alone."""
        try:
            action(selector, jobs, job)
        except Exception as exc:  # raised in the caller's task (the run reports a bug)
            self._end(selector, jobs, job, (False, exc))

    def _advance(self, selector: selectors.BaseSelector, jobs: _Jobs, job: _Setup) -> None:
        """Take a setup step as far as it goes; watch its socket for what it waits on.

        Unwatched first: a step may close its socket and open another on the same number.
        """
        if job.watched is not None:
            selector.unregister(job.watched)
            job.watched = None
        if not (events := job.step.advance()):
            self._end(selector, jobs, job, (True, job.step.result()))
            return
        assert job.conn.sock is not None
        selector.register(job.conn.sock, events, job)
        job.watched = job.conn.sock

    def _expire(self, selector: selectors.BaseSelector, jobs: _Jobs, job: _Setup) -> None:
        if job.conn.closed:
            self._end(selector, jobs, job, (False, Abandoned()))
        elif time.monotonic() >= job.step.deadline:
            self._end(selector, jobs, job, (False, job.step.expired()))

    def _adopt(self, selector: selectors.BaseSelector, jobs: _Jobs, job: _Job) -> None:
        # Its turn (and its silence) runs from now: timed from the asking, a call that
        # waited behind others would come back after one record, and fall further behind.
        job.started = job.heard = time.monotonic()
        job.sock.setblocking(False)
        selector.register(job.sock, selectors.EVENT_READ, job)
        self._pump(selector, jobs, job)  # records may wait decrypted already

    def _pump(self, selector: selectors.BaseSelector, jobs: _Jobs, job: _Job) -> None:
        """Receive what is there, writing full buffers; end the call when due."""
        view, read = job.view, _record_reader(job.sock)
        filled, records, fill = job.filled, 0, _fill(job)
        while filled < fill:
            try:
                n = read(fill - filled, view[filled:fill])
            except ssl.SSLEOFError:  # closed without close_notify: an end, as recv_into says
                n = 0
            except (ssl.SSLWantReadError, BlockingIOError):
                job.filled = filled
                if records:
                    job.heard = time.monotonic()
                return  # wait until readable
            except OSError as exc:  # a reset, or the connection closed from the loop
                job.filled = filled
                self._end(selector, jobs, job, self._flushed(job) or (False, _read_error(exc)))
                return
            if n == 0:  # the end of the stream: report what was written
                job.filled = filled
                self._end(selector, jobs, job, self._flushed(job) or (True, (job.got, None)))
                return
            filled, records = filled + n, records + 1
            if filled == fill:
                job.filled, filled = filled, 0
                if (failed := self._flushed(job)) is not None:
                    self._end(selector, jobs, job, failed)
                    return
                fill = _fill(job)
            # The clock every 16 records (256 KiB): a 50 ms turn needs no finer grain.
            if not records % 16 and time.monotonic() - job.started >= BUDGET:
                break
        job.filled, job.heard = filled, time.monotonic()
        self._end(selector, jobs, job, self._flushed(job) or (True, (job.got, None)))

    @staticmethod
    def _flushed(job: _Job) -> Outcome | None:
        """Write the buffered bytes; the outcome to end with if the write failed."""
        if not job.filled:
            return None
        try:
            job.sink.write(job.view[: job.filled])
        except OSError as exc:  # the disk's error, not the network's: the caller raises it
            job.filled = 0
            return (True, (job.got, exc))
        job.got += job.filled
        job.filled = 0
        return None

    def _check(self, selector: selectors.BaseSelector, jobs: _Jobs, job: _Job) -> None:
        now = time.monotonic()
        if job.conn.closed:
            self._end(selector, jobs, job, self._flushed(job) or (True, (job.got, None)))
        elif job.got or job.filled:
            if now - job.started >= BUDGET:
                self._end(selector, jobs, job, self._flushed(job) or (True, (job.got, None)))
        elif job.limit is not None and now - job.heard >= job.limit:
            msg = "no data before the read timeout"
            self._end(selector, jobs, job, (False, httpx.ReadTimeout(msg)))

    def _end(
        self, selector: selectors.BaseSelector, jobs: _Jobs, job: _Job | _Setup, outcome: Outcome
    ) -> None:
        if jobs.pop(id(job), None) is None:
            return
        watched = job.watched if isinstance(job, _Setup) else job.sock
        with contextlib.suppress(KeyError, ValueError, OSError):  # not registered, or closed
            if watched is not None:
                selector.unregister(watched)
        if (sock := job.conn.sock) is not None:
            with contextlib.suppress(OSError):  # (closed: an opening that failed)
                sock.settimeout(POLL)  # back to the connection thread's way, for a slow path
        job.conn.restore()
        post(job.reply, outcome)


def _fill(job: _Job) -> int:
    """How far the next buffer fills: the sink's room, looked at once a buffer.

    Not before every record (a Python call each, 60,000 a GiB): a tail split that comes
    mid-buffer lets this buffer past the new end, as ``Block.room`` allows.
    """
    return min(len(job.view), job.total - job.got, job.sink.room())


def _record_reader(sock: ssl.SSLSocket) -> Callable[[int, memoryview], int]:
    """``read(n, view)``: one record into ``view``; 0, or ``SSLEOFError``, at the end.

    The GIL is held between records, so the Python each record costs is time the other
    receiving thread waits: the ``_ssl`` object's own ``read`` skips three frames of
    ``SSLSocket.recv_into``. Those frames also turn an end without close_notify (a ragged
    end) into 0; the caller does that itself.
    """
    direct = getattr(sock, "_sslobj", None)
    if direct is None:  # an ssl module without it: the public way
        return lambda n, view: sock.recv_into(view, n)
    read: Callable[[int, memoryview], int] = direct.read
    return read


def _read_error(exc: OSError) -> httpx.ReadError:
    msg = f"{type(exc).__name__}: {exc}"
    return httpx.ReadError(msg)
