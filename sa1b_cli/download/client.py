"""The HTTP client of a download run: httpx, over the wire transport (see wire.py).

When httpcore carries the bodies (behind a proxy) it reads 64 KiB per event-loop turn
(``AsyncHTTP11Connection.READ_NUM_BYTES``), each turn at the same overhead: sa1b raises it
to 1 MiB (about half the CPU a GiB). It is a class attribute, so pyproject.toml pins
httpcore's range and tests/download/test_client.py fails if httpcore stops reading it.
"""

from __future__ import annotations

import os

import httpx

from sa1b_cli import __version__
from sa1b_cli.core.errors import UsageError
from sa1b_cli.core.manifest import redact_text
from sa1b_cli.core.text import shown
from sa1b_cli.download.wire import PROXY_VARS, make_transport

__all__ = ["READ_NUM_BYTES", "make_client"]

READ_NUM_BYTES = 1 << 20


def make_client(
    timeout: float, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """A client whose read timeout is the stall timeout: a silent connection is dropped.

    The wire transport carries the bodies unless a test injects its own, or a proxy is set
    (then httpcore does, reading 1 MiB per turn).
    """
    if transport is None:
        transport = make_transport()
    if transport is None:  # httpcore carries the bodies: imported only then (40 ms)
        from httpcore._async.http11 import AsyncHTTP11Connection

        AsyncHTTP11Connection.READ_NUM_BYTES = READ_NUM_BYTES
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    try:  # httpx reads the proxy variables here, and refuses what it cannot use
        return _Client(
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            limits=limits,
            follow_redirects=False,  # redirects.send_following applies sa1b's policy
            headers={"User-Agent": f"sa1b/{__version__}"},
        )
    except (ValueError, ImportError, httpx.InvalidURL) as exc:
        names = " / ".join(name for name in PROXY_VARS if os.environ.get(name)) or "a proxy"
        why = shown(redact_text(str(exc)), 120)
        msg = f"the proxy in {names} cannot be used ({why})"
        hint = "Set it to an http:// or https:// proxy address, or unset it."
        raise UsageError(msg, hint=hint) from exc


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing and adds nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass

    def set_cookie_header(self, request: httpx.Request) -> None:
        pass


class _Client(httpx.AsyncClient):
    """httpx's client without cookies: a signed link needs none, and sa1b sends none.

    httpx passes every response through its cookie jar, wrapping it and its request in
    urllib objects (the URL parsed once more) even when no cookie is ever set.
    """

    _jar: _NoCookies | None = None

    @property
    def cookies(self) -> httpx.Cookies:
        if self._jar is None:  # one per client: httpx asks for it with every response
            self._jar = _NoCookies()
        return self._jar

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        pass  # never kept
