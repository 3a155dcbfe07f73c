"""Accepting or rejecting a response before a single byte of it is written (DESIGN.md section 3).

Rules: append only after a 206 whose Content-Range is exactly what was asked (start, and for a
segment the end) and whose total is the expected size; a 200 to a resume starts over, and to a
segment request never writes at all; a 416 is done only when the size matches; a 403 that
says "expired" stops the shard at once; 429/5xx are retried, honouring Retry-After.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
from dataclasses import dataclass
from typing import Literal

import httpx

from sa1b_cli.core.manifest import redact_text
from sa1b_cli.core.text import natural, shown

__all__ = [
    "RETRYABLE_STATUS",
    "Ask",
    "Verdict",
    "content_range",
    "judge",
    "read_small",
    "retry_after_seconds",
]

_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.ASCII)
_UNSATISFIED_RE = re.compile(r"bytes\s+\*/(\d+)", re.ASCII)
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_REJECT_HINTS = {
    403: "the CDN rejected the link; get a fresh manifest from Meta's SA-1B page",
    404: "the CDN has no such file; get a fresh manifest",
}

VerdictKind = Literal[
    "append",  # write the body at the asked offset
    "restart",  # a 200 to a resume: drop what we have and take this body from byte 0
    "whole",  # a 416 confirming every byte is already here
    "size_changed",  # the total differs from what we knew: the shard fails
    "mismatch",  # not the range asked for (segment: fall back to one connection)
    "refused",  # a 416 that does not confirm a whole file
    "retry",  # transient: try again after a wait
    "expired",  # the signature expired: stop the shard
    "reject",  # permanent failure for this shard
]


@dataclass(frozen=True, slots=True)
class Ask:
    """What a request asked for: bytes from ``start``, up to ``end`` (exclusive) if set."""

    start: int
    end: int | None = None  # None: to the end of the file
    expected_size: int | None = None  # the total we know, if any
    held: int = 0  # bytes already here (a 416 means "whole" only when it equals the total)

    @property
    def to_the_end(self) -> bool:
        return self.end is None or self.end == self.expected_size

    def range_header(self) -> str | None:
        """No header for the whole file; open-ended when the range runs to the end."""
        if self.start == 0 and self.to_the_end:
            return None
        end = "" if self.end is None or self.to_the_end else str(self.end - 1)
        return f"bytes={self.start}-{end}"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: str = ""
    total: int | None = None
    retry_after: float | None = None


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if (seconds := natural(value)) is not None:
        return float(seconds)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - now)
    return None


def _int_header(response: httpx.Response, name: str) -> int | None:
    return natural(response.headers.get(name, "").strip())


def content_range(response: httpx.Response) -> tuple[int, int, int] | None:
    """A 206's ``Content-Range`` as (first, end, total) bytes; None unless whole and sized."""
    match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None or match.group(3) == "*":
        return None
    return int(match.group(1)), int(match.group(2)) + 1, int(match.group(3))


def _partial(response: httpx.Response, ask: Ask) -> Verdict:
    shown = response.headers.get("Content-Range", "none")
    if (sent := content_range(response)) is None:
        return Verdict("mismatch", f"unusable Content-Range {shown!r} for bytes {ask.start}-")
    first, end, total = sent
    if total == 0:  # (no range of it exists: judged as empty)
        return Verdict("append", total=0)
    if ask.expected_size is not None and total != ask.expected_size:
        return Verdict("size_changed", f"the file size changed to {total:,} bytes", total)
    wanted_end = ask.end if ask.end is not None else total
    if first != ask.start or end != wanted_end:
        asked = f"{ask.start}-{wanted_end - 1}"
        return Verdict("mismatch", f"Content-Range {shown!r} is not the bytes {asked} asked for")
    return Verdict("append", total=total)


def _unsatisfiable(response: httpx.Response, ask: Ask) -> Verdict:
    match = _UNSATISFIED_RE.fullmatch(response.headers.get("Content-Range", "").strip())
    total = int(match.group(1)) if match else None
    if total is not None and ask.expected_size is not None and total != ask.expected_size:
        return Verdict("size_changed", f"the file size changed to {total:,} bytes", total)
    if ask.to_the_end and total is not None and total == ask.held:
        return Verdict("whole", total=total)
    return Verdict("refused", "server refused the range (416)", total)


async def judge(response: httpx.Response, ask: Ask, *, now: float) -> Verdict:
    """The verdict on a response's status and headers; nothing of the body is kept.

    Two answers a server may give that no SA-1B file can: an empty file (it landed as a
    "downloaded" 0-byte shard), and bytes in a Content-Encoding (asked for as they are,
    they would land encoded). Either is retried, and the shard's budget ends it.
    """
    verdict = await _judge(response, ask, now=now)
    if verdict.kind in ("append", "restart", "whole", "refused") and verdict.total == 0:
        return Verdict("retry", "the server says the file is empty (no SA-1B file is)")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if verdict.kind in ("append", "restart") and encoding not in ("", "identity"):
        return Verdict("retry", f"the server sent the file encoded ({shown(encoding, 20)})")
    return verdict


async def _judge(response: httpx.Response, ask: Ask, *, now: float) -> Verdict:
    code = response.status_code
    if code == 206:
        return _partial(response, ask)
    if code == 200:
        total = _int_header(response, "Content-Length")
        if total is not None and ask.expected_size is not None and total != ask.expected_size:
            return Verdict("size_changed", f"the file size changed to {total:,} bytes", total)
        if ask.range_header() is None:  # a plain GET: this body is the whole file
            return Verdict("append", total=total)
        return Verdict("restart", "server ignored the Range request", total)
    if code == 416:
        return _unsatisfiable(response, ask)
    body = redact_text((await read_small(response)).strip())  # a body may echo the URL
    if code == 403 and "expired" in body.lower():
        return Verdict("expired", "the CDN answered 403 'URL signature expired'")
    if code in RETRYABLE_STATUS:
        wait = retry_after_seconds(response.headers.get("Retry-After"), now=now)
        return Verdict("retry", f"HTTP {code}", retry_after=wait)
    reason = f"HTTP {code}" + (f" '{shown(body, 80)}'" if body else "")  # escaped and cut
    hint = _REJECT_HINTS.get(code, "check the link and the manifest")
    return Verdict("reject", f"{reason}: {hint}")


async def read_small(response: httpx.Response, limit: int = 4096) -> str:
    with contextlib.suppress(httpx.ResponseNotRead):
        return response.content[:limit].decode("utf-8", "replace")  # already in memory
    data = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= limit:
                break
    return data[:limit].decode("utf-8", "replace")
