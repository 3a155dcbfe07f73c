"""Fetch: one request, judged before a byte is written, and its body into the shard file.

A request asks for a range (``Ask``); the redirect policy (``redirects``) follows it; the
Range rules (``accept.judge``) turn the reply into a verdict; only then does the body go,
by the one body path (``receive.Receiver``), into a block lent by the shard file. What
goes wrong is one of the signals of ``retries``: ``Retry``, ``Fallback`` or ``Stop``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from sa1b_cli.core.manifest import ManifestRow, host_of
from sa1b_cli.core.text import format_size, shown
from sa1b_cli.download.accept import Ask, Verdict, judge
from sa1b_cli.download.config import TransferContext
from sa1b_cli.download.durable import ShardFile, SizeChanged
from sa1b_cli.download.plan import Piece
from sa1b_cli.download.receive import Receiver, Trickle, body_of
from sa1b_cli.download.redirects import RedirectRefused, send_following
from sa1b_cli.download.retries import Fallback, Retry, Stop
from sa1b_cli.download.wire import CHUNK_EXTENSION

__all__ = ["Fetcher"]

_PUSHBACK_STATUS = frozenset({429, 503})
_UNTRUSTED_HINT = "behind a proxy or a CA of your own, set SSL_CERT_FILE to its certificate"


def _not_connected(exc: httpx.ConnectError) -> Retry | Stop:
    """A failed connect, named by its cause's type (its message may quote the link).

    An untrusted certificate stops the shard: every retry would fail the same way.
    """
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = shown(getattr(cause, "verify_message", None) or "verification failed", 100)
        msg = f"the server's TLS certificate is not trusted ({why}); {_UNTRUSTED_HINT}"
        return Stop.failed(msg)
    if isinstance(cause, ConnectionRefusedError):
        what = "connection refused"
    elif isinstance(cause, UnicodeError):  # every retry would fail the same way
        return Stop.failed("could not connect (the host is not a usable name)")
    elif isinstance(cause, socket.gaierror):
        what = "the host name does not resolve"
    elif isinstance(cause, ssl.SSLError):
        what = f"TLS handshake failed, {shown(cause.reason or type(cause).__name__, 60)}"
    elif isinstance(cause, OSError) and cause.errno:
        what = os.strerror(cause.errno)
    else:
        what = type(cause).__name__
    return Retry(f"could not connect ({what})", push=True, unreachable=True)


def _root_cause(exc: BaseException) -> BaseException:
    """The first exception of a chain (a transport's error, wrapped by httpx)."""
    for _ in range(8):  # a chain is a few links long; never follow a loop of them
        below = exc.__cause__ or exc.__context__
        if below is None:
            break
        exc = below
    return exc


class Fetcher:
    """Requests for one shard's link, and their bodies into its file."""

    def __init__(self, ctx: TransferContext, row: ManifestRow, file: ShardFile) -> None:
        self.ctx, self.row, self.file, self.name = ctx, row, file, row.file_name
        # Fetched in pieces over several connections (until a server refuses a range):
        # only then does a dropped connection ask the run for fewer.
        self.split = ctx.settings.split
        self.host = host_of(row.url)
        self._moved_to: set[str] = set()  # other hosts a redirect led to, told once each
        self._template: tuple[httpx.URL, httpx.Headers, dict[str, Any]] | None = None

    async def whole(self) -> None:
        """One request from the end of the contiguous prefix to the end of the file."""
        await self.file.drain()  # the resume offset must be on disk (or its error raised)
        offset = self.file.written.prefix()
        ask = Ask(offset, None, self.file.expected_size, held=offset)
        async with self._request(ask) as (response, verdict):
            if verdict.kind == "whole":
                await self.file.learn_size(verdict.total)
                return
            if verdict.kind in ("size_changed", "refused"):  # the size was not known yet
                self.file.expected_size = None  # another object: keep nothing of the old one
                await self.file.start_over()
                msg = f"{verdict.reason}; starting over"
                raise Retry(msg)
            if verdict.kind == "mismatch":
                raise Retry(verdict.reason)
            if verdict.kind == "restart":
                self.ctx.sink.note(self.name, f"{verdict.reason}; starting over")
                await self.file.start_over()
                offset = 0
            await self.file.learn_size(verdict.total)
            self.ctx.sink.started(self.name, self.file.expected_size, self.file.written.total())
            await self._receive(response, offset, None)
            if self.file.expected_size is None and not self.file.written.total():
                msg = "the server sent an empty body"  # no SA-1B file is empty
                raise Retry(msg)

    async def piece(self, piece: Piece) -> None:
        """One request for ``[piece.pos, piece.end)``; stops early if the piece is split."""
        ask = Ask(piece.pos, piece.end, self.file.expected_size)
        async with self._request(ask) as (response, verdict):
            if verdict.kind != "append":
                # Anything but the exact 206 asked for never writes into the file.
                raise Fallback(verdict.reason or f"HTTP {response.status_code} to a range request")
            try:
                await self._receive(response, piece.pos, piece)
            finally:
                # After a drop mid-piece: whatever is written from pos on need not come again.
                piece.reached(self.file.written.run_end(piece.pos))

    @asynccontextmanager
    async def _request(self, ask: Ask) -> AsyncIterator[tuple[httpx.Response, Verdict]]:
        """Send one GET for ``ask`` and judge the answer; transport errors become retries."""
        response = await self._send(ask)
        try:
            verdict = await judge(response, ask, now=self.ctx.wall_clock())
            self._act_on(verdict, response.status_code)
            yield response, verdict
        finally:
            await response.aclose()

    async def _send(self, ask: Ask) -> httpx.Response:
        try:
            async with asyncio.timeout(self.ctx.settings.stall_timeout):
                request = self._build(ask)
                response = await send_following(self.ctx.client, request, on_host=self._moved)
            self.ctx.hosts.answered(self.host, self.ctx.monotonic())
            return response
        except TimeoutError as exc:
            msg = "no answer from the server"
            raise Retry(msg) from exc
        except RedirectRefused as exc:
            msg = f"not followed: {exc.reason}"
            raise Stop.failed(msg) from exc
        except (
            httpx.UnsupportedProtocol,
            httpx.LocalProtocolError,
            httpx.InvalidURL,
            UnicodeError,  # a host name IDNA refuses (``URL.host`` decodes it)
        ) as exc:
            msg = f"the request cannot be sent ({shown(str(exc), 100)})"
            raise Stop.failed(msg) from exc
        except httpx.RemoteProtocolError as exc:
            raise Retry(str(exc)) from exc
        except httpx.ConnectError as exc:
            raise _not_connected(exc) from exc
        except httpx.ConnectTimeout as exc:
            msg = "could not connect (no answer in time)"
            raise Retry(msg, unreachable=True) from exc
        except httpx.TransportError as exc:
            msg = f"network error ({type(exc).__name__})"
            raise Retry(msg) from exc

    def _act_on(self, verdict: Verdict, status: int) -> None:
        """Raise what a verdict that writes nothing means for the shard."""
        if verdict.kind == "expired":
            raise Stop.expired(verdict.reason)
        if verdict.kind == "retry":
            push = status in _PUSHBACK_STATUS
            raise Retry(verdict.reason, retry_after=verdict.retry_after, push=push)
        if verdict.kind == "reject":
            raise Stop.failed(verdict.reason)
        if verdict.kind == "size_changed" and self.file.expected_size is not None:
            assert verdict.total is not None
            raise SizeChanged(self.file.expected_size, verdict.total)

    def _build(self, ask: Ask) -> httpx.Request:
        """The GET for ``ask``, from a template: ``build_request`` would parse the link and
        merge headers and cookies anew for every request (a urllib request for the jar).
        """
        if self._template is None:
            client = self.ctx.client
            timeout = {"timeout": client.timeout.as_dict()}
            self._template = (httpx.URL(self.row.url), client.headers, timeout)
        url, headers, timeout = self._template
        asked = {"Accept-Encoding": "identity"}
        if (wanted := ask.range_header()) is not None:
            asked["Range"] = wanted
        merged = headers.copy()
        merged.update(asked)  # as build_request merges them (the same order on the wire)
        extensions = {**timeout, CHUNK_EXTENSION: self._block_size()}
        return httpx.Request("GET", url, headers=merged, extensions=extensions)

    def _moved(self, host: str) -> None:
        if host not in self._moved_to:
            self._moved_to.add(host)
            self.ctx.sink.note(self.name, f"redirected to another host, {host}")

    async def _receive(self, response: httpx.Response, pos: int, piece: Piece | None) -> None:
        """The body into the file from ``pos``; a retry if it ends short of its end."""
        settings, controller = self.ctx.settings, self.ctx.controller
        receiver = Receiver(
            self.file,
            pos=pos,
            sink=self.ctx.sink,
            reserve=min(settings.reserve, settings.min_piece),
            limiter=self.ctx.limiter,
            counted=controller.counted,
            piece=piece,
            ceiling=settings.max_unsized,
        )
        try:
            with controller.receiving(), self.ctx.hosts.streaming(self.host):
                body = body_of(response, self._block_size())
                await receiver.run(body, settings.stall_timeout, settings.min_rate)
        except Trickle as exc:  # a server sharing a small rate among many: fewer connections
            msg = f"slower than {format_size(settings.min_rate)}/s for {settings.stall_timeout:g}s"
            raise Retry(msg, push=self.split) from exc
        except TimeoutError as exc:
            msg = f"no data for {settings.stall_timeout:g}s"
            raise Retry(msg) from exc
        except httpx.RemoteProtocolError as exc:  # its message is already in words
            raise Retry(str(exc), push=self.split) from exc
        except httpx.TransportError as exc:
            msg = f"connection dropped ({type(exc).__name__}: {exc})"
            raise Retry(msg, push=self.split) from exc
        finally:
            self.ctx.fetched[self.name] = self.file.arrived  # an interrupted run counts them
        end = piece.end if piece is not None else self.file.expected_size
        if end is not None and receiver.pos < end:
            msg = f"the connection closed {format_size(end - receiver.pos)} before the end"
            raise Retry(msg)

    def _block_size(self) -> int:
        """Bytes a connection receives and writes at a time: with many connections, fewer
        (within ~8 MiB in all up to 32 connections; past that 256 KiB each, not less)."""
        share = (8 << 20) // max(1, self.ctx.controller.active)
        return max(256 << 10, min(self.ctx.settings.block_size, share))
