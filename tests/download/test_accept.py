"""The Range rules, one response at a time: what may be written, and what stops a shard."""

from __future__ import annotations

import httpx
import pytest

from sa1b_cli.download.accept import Ask, judge, retry_after_seconds

SIZE = 1000


def reply(status: int, body: bytes = b"", **headers: str) -> httpx.Response:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return httpx.Response(status, headers=named, content=body)


@pytest.mark.parametrize(
    ("ask", "response", "kind", "total"),
    [
        # a plain GET: the whole file
        (Ask(0, None, None), reply(200, content_length="1000"), "append", SIZE),
        # a resume answered with exactly the range asked for
        (Ask(400, None, SIZE), reply(206, content_range="bytes 400-999/1000"), "append", SIZE),
        # a segment answered with exactly its range
        (Ask(0, 500, SIZE), reply(206, content_range="bytes 0-499/1000"), "append", SIZE),
        # a resume answered with the whole file: start over
        (Ask(400, None, SIZE), reply(200, content_length="1000"), "restart", SIZE),
        # another start, another end, no range or an unknown total: never written
        (Ask(400, None, SIZE), reply(206, content_range="bytes 0-999/1000"), "mismatch", None),
        (Ask(0, 500, SIZE), reply(206, content_range="bytes 0-599/1000"), "mismatch", None),
        (Ask(400, None, SIZE), reply(206), "mismatch", None),
        (Ask(400, None, SIZE), reply(206, content_range="bytes 400-999/*"), "mismatch", None),
        # the total changed: the shard fails (its size is fixed once known)
        (
            Ask(400, None, SIZE),
            reply(206, content_range="bytes 400-1999/2000"),
            "size_changed",
            2000,
        ),
        (Ask(0, None, SIZE), reply(200, content_length="64"), "size_changed", 64),
        (
            Ask(SIZE, None, SIZE, held=SIZE),
            reply(416, content_range="bytes */2000"),
            "size_changed",
            2000,
        ),
        # a 416 is "already whole" only when every byte is here
        (Ask(SIZE, None, SIZE, held=SIZE), reply(416, content_range="bytes */1000"), "whole", SIZE),
        (Ask(500, None, SIZE, held=500), reply(416, content_range="bytes */1000"), "refused", SIZE),
        (Ask(SIZE, None, SIZE, held=SIZE), reply(416), "refused", None),
    ],
)
async def test_what_may_be_written(ask: Ask, response: httpx.Response, kind: str, total):
    verdict = await judge(response, ask, now=0.0)
    assert (verdict.kind, verdict.total) == (kind, total), verdict.reason


@pytest.mark.parametrize(
    ("response", "kind", "says"),
    [
        (reply(403, b"URL signature expired"), "expired", "expired"),
        (reply(403, b"Forbidden"), "reject", "fresh manifest"),
        (reply(404), "reject", "no such file"),
        (reply(429, retry_after="7"), "retry", "HTTP 429"),
        (reply(503), "retry", "HTTP 503"),
        (reply(410, b"\x1b[31mred\x1b[0m gone"), "reject", "\\x1b[31mred"),
        (reply(500, b"see https://cdn.example/f?oh=SECRET&oe=1"), "retry", "HTTP 500"),
    ],
)
async def test_what_stops_a_shard_and_what_is_retried(response, kind, says):
    verdict = await judge(response, Ask(0, None, SIZE), now=0.0)
    assert verdict.kind == kind and says in verdict.reason
    assert "\x1b" not in verdict.reason and "SECRET" not in verdict.reason


@pytest.mark.parametrize(
    ("ask", "response", "says"),
    [
        (Ask(0), reply(200, content_length="0"), "the file is empty"),
        (Ask(400), reply(206, content_range="bytes 0-0/0"), "the file is empty"),
        (Ask(0), reply(416, content_range="bytes */0"), "the file is empty"),
        (Ask(0), reply(200, content_length="1000", content_encoding="gzip"), "encoded (gzip)"),
        (
            Ask(400, None, SIZE),
            reply(206, content_range="bytes 400-999/1000", content_encoding="br"),
            "encoded (br)",
        ),
    ],
)
async def test_an_empty_or_encoded_file_is_never_written(ask, response, says):
    """Both landed as "downloaded" shards before: 0 bytes, or the bytes gzip made of them."""
    verdict = await judge(response, ask, now=0.0)
    assert (verdict.kind, verdict.total) == ("retry", None) and says in verdict.reason


async def test_an_identity_encoding_is_the_file_as_it_is():
    response = reply(200, content_length="1000", content_encoding="identity")
    verdict = await judge(response, Ask(0), now=0.0)
    assert (verdict.kind, verdict.total) == ("append", SIZE)


async def test_a_long_error_body_is_cut_and_its_link_hidden():
    body = b"bad link https://cdn.example/f?oh=SECRET " + b"x" * 10_000
    verdict = await judge(reply(400, body), Ask(0, None, SIZE), now=0.0)
    assert verdict.kind == "reject" and "SECRET" not in verdict.reason
    assert len(verdict.reason) < 300


def test_retry_after_as_seconds_or_a_date():
    assert retry_after_seconds("7", now=0.0) == 7.0
    assert retry_after_seconds("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0) == 30.0
    assert retry_after_seconds("soon", now=0.0) is None
    assert retry_after_seconds(None, now=0.0) is None
    assert retry_after_seconds("\u00b2", now=0.0) is None  # isdigit(), yet not a number


def test_the_range_header_asked_for():
    assert Ask(0, None, SIZE).range_header() is None
    assert Ask(0, SIZE, SIZE).range_header() is None
    assert Ask(400, None, SIZE).range_header() == "bytes=400-"
    assert Ask(0, 500, SIZE).range_header() == "bytes=0-499"
