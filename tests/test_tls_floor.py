"""The bench's Python TLS floor (devtools/tls_floor): its bytes must be the server's, or it fails.

Its times stand beside sa1b's in `make bench`, so a floor that wrote less, or took a wrong
answer, would make a false baseline.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from sa1b_cli.devtools import tls_floor
from tests.servers import Serve, requests, serve_tls

BODIES = {"/a.bin": os.urandom(3 << 20 | 123), "/b.bin": os.urandom(700_001)}


def server(mode: str) -> Serve:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for head in requests(reader):
            method, path = head.split(b" ")[:2]
            body = BODIES[path.decode()]
            if method == b"HEAD":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            elif (found := re.search(rb"Range: bytes=(\d+)-(\d+)", head)) and mode != "whole":
                start, end = int(found[1]), int(found[2])
                part = body[start : end + 1] + (b"!" if mode == "long" else b"")
                writer.write(
                    b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n"
                    b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (len(part), start, end, len(body))
                )
                writer.write(part[: len(part) // 2] if mode == "short" else part)
                if mode == "short":
                    await writer.drain()
                    return
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    return respond


async def run_floor(
    certificate: tuple[Path, Path], tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> int:
    srv, url, _ = await serve_tls(certificate, server(mode))
    base = url.rsplit("/", 1)[0]
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{base}{path}\n" for path in BODIES))
    (out := tmp_path / "out").mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    try:
        return await asyncio.to_thread(tls_floor.main, [str(urls), str(out)])
    finally:
        srv.close()


async def test_the_floor_writes_every_range_of_every_file(certificate, tmp_path, monkeypatch):
    assert await run_floor(certificate, tmp_path, "ranges", monkeypatch) == 0
    for path, body in BODIES.items():
        assert (tmp_path / "out" / path.lstrip("/")).read_bytes() == body


@pytest.mark.parametrize(
    ("mode", "says"),
    [("whole", "a range from"), ("long", "length b'"), ("short", "bytes short")],
)
async def test_the_floor_fails_on_a_wrong_answer(
    certificate, tmp_path, monkeypatch, capsys, mode, says
):
    assert await run_floor(certificate, tmp_path, mode, monkeypatch) == 1
    assert says in capsys.readouterr().err
