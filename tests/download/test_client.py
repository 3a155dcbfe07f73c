"""The httpcore detail the client depends on, guarded: this fails when httpcore changes it."""

from __future__ import annotations

import inspect

from httpcore._async import http11

from sa1b_cli.download.client import READ_NUM_BYTES, make_client


async def test_httpcore_still_reads_its_read_size_from_the_class_attribute(monkeypatch):
    source = inspect.getsource(http11.AsyncHTTP11Connection._receive_event)
    assert "self.READ_NUM_BYTES" in source
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # httpcore's turn
    monkeypatch.setattr(http11.AsyncHTTP11Connection, "READ_NUM_BYTES", 64 << 10)
    async with make_client(5.0):
        assert http11.AsyncHTTP11Connection.READ_NUM_BYTES == READ_NUM_BYTES == 1 << 20
