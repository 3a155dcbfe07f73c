"""An in-memory CDN for httpx.MockTransport, with one-shot faults per request."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

BASE = "https://scontent.xx.fbcdn.net/m1/v/t6"
QUERY = "_nc_gid&ccb=10-5&oh=00_SECRETSIG&oe={oe:X}&_nc_sid=0fdd"


def url_for(name: str, *, oe: int = 0x7FFFFFFF) -> str:
    return f"{BASE}/{name}?{QUERY.format(oe=oe)}"


class DroppingStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes, after: int) -> None:
        self.data, self.after = data, after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.after]
        raise httpx.ReadError("connection reset by peer")


class StallingStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes, after: int) -> None:
        self.data, self.after = data, after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.after]
        await asyncio.sleep(3600)
        yield b""


class ChunkedStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes, size: int = 64 << 10) -> None:
        self.data, self.size = data, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]


@dataclass
class Seen:
    path: str
    range: str | None
    accept_encoding: str | None
    raw_query: bytes


@dataclass
class FakeCDN:
    files: dict[str, bytes]
    faults: list[str] = field(default_factory=list)  # consumed one per request
    seen: list[Seen] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        rng = request.headers.get("Range")
        self.seen.append(
            Seen(request.url.path, rng, request.headers.get("Accept-Encoding"), request.url.query)
        )
        data = self.files[name]
        fault = self.faults.pop(0) if self.faults else "ok"
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        start = int(match.group(1)) if match else 0
        end = int(match.group(2)) if match and match.group(2) else None
        headers = {"Accept-Ranges": "bytes"}
        kind, _, arg = fault.partition(":")
        if kind == "status":
            code, _, text = arg.partition(":")
            extra = {}
            if "|" in text:
                text, retry = text.split("|")
                extra["Retry-After"] = retry
            return httpx.Response(int(code), content=text.encode(), headers=extra)
        if kind == "ignore_range" or not rng:
            headers["Content-Length"] = str(len(data))
            stream: httpx.AsyncByteStream = ChunkedStream(data)
            if kind == "drop":
                stream = DroppingStream(data, int(arg))
            if kind == "stall":
                stream = StallingStream(data, int(arg))
            return httpx.Response(200, headers=headers, stream=stream)
        if start >= len(data):
            headers["Content-Range"] = f"bytes */{len(data)}"
            return httpx.Response(416, headers=headers)
        if kind == "wrong_range":
            start = max(0, start - 100)
        if kind == "size_changed":
            data += b"more"
        last = min(end, len(data) - 1) if end is not None else len(data) - 1
        body = data[start : last + 1]
        headers["Content-Range"] = f"bytes {start}-{last}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        stream = ChunkedStream(body)
        if kind == "drop":
            stream = DroppingStream(body, int(arg))
        if kind == "stall":
            stream = StallingStream(body, int(arg))
        return httpx.Response(206, headers=headers, stream=stream)
