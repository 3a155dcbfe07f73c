"""Small asyncio servers on 127.0.0.1 for the tests that speak raw HTTP/1.1, over TLS too."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sa1b_cli.devtools.bench_tls import self_signed_certificate

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def requests(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Each request head on the connection, until the client hangs up."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        yield head


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost, and its key (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for the TLS test")
    return self_signed_certificate(folder)


async def start_server(respond: Serve, tls: ssl.SSLContext | None = None) -> asyncio.Server:
    """Run ``respond`` for each connection on 127.0.0.1 (a free port); a client that goes
    away mid-exchange ends its connection quietly."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await respond(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)


async def serve_tls(
    certificate: tuple[Path, Path], respond: Serve
) -> tuple[asyncio.Server, str, ssl.SSLContext]:
    """A TLS server on 127.0.0.1 that runs ``respond`` for each connection: the server, its
    URL, and a client context that trusts its certificate."""
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    srv = await start_server(respond, served)
    url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}/t"
    return srv, url, ssl.create_default_context(cafile=str(cert))
