"""The client: the httpcore detail it depends on (guarded), and no cookie jar."""

from __future__ import annotations

import inspect

import httpx
from httpcore._async import http11

from sa1b_cli.download.client import READ_NUM_BYTES, make_client


async def test_httpcore_still_reads_its_read_size_from_the_class_attribute(monkeypatch):
    source = inspect.getsource(http11.AsyncHTTP11Connection._receive_event)
    assert "self.READ_NUM_BYTES" in source
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # httpcore's turn
    monkeypatch.setattr(http11.AsyncHTTP11Connection, "READ_NUM_BYTES", 64 << 10)
    async with make_client(5.0):
        assert http11.AsyncHTTP11Connection.READ_NUM_BYTES == READ_NUM_BYTES == 1 << 20


async def test_cookies_a_server_sets_are_never_sent_back():
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Set-Cookie": "edge=abc; Path=/"}, content=b"x")

    async with make_client(5.0, transport=httpx.MockTransport(handle)) as client:
        for _ in range(2):
            await client.get("http://cdn.example/sa_000000.tar?oe=1")
        client.cookies = {"set": "by hand"}  # type: ignore[assignment]
        await client.get("http://cdn.example/sa_000000.tar?oe=1")
        assert not client.cookies
    assert [r.headers.get("cookie") for r in seen] == [None, None, None]
