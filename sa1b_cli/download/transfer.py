"""One shard's transfer: the resume state machine, retries, expiry, finalise.

Rules (DESIGN.md section 3): append only after a 206 whose Content-Range starts at
our size and whose total is the expected size; a 200 starts over; a 416 is done
only when the size matches; an expired link stops the shard at once; a final
name holds only whole, checked bytes (fsync + rename).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from sa1b_cli.core.checksums import RECORD_ALGORITHM
from sa1b_cli.core.claims import Claim
from sa1b_cli.core.errors import DiskFullError
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.manifest import ManifestRow, object_path, redact_text
from sa1b_cli.core.results import EXPIRED_HINT, DownloadStatus, ShardResult
from sa1b_cli.core.store import Record, RecordStatus, Store
from sa1b_cli.download.partfile import PartFile, is_disk_full
from sa1b_cli.download.ratelimit import RateLimiter

__all__ = ["TransferContext", "TransferSettings", "fetch_shard", "retry_after_seconds"]

_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RE = re.compile(r"bytes\s+\*/(\d+)")
PROGRESS_EVERY = 256 << 10
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_REJECT_HINTS = {
    403: "the CDN rejected the link; get a fresh manifest from Meta's SA-1B page",
    404: "the CDN has no such file; get a fresh manifest",
}


@dataclass(frozen=True, slots=True)
class TransferSettings:
    stall_timeout: float = 30.0
    max_attempts: int = 8  # consecutive attempts that deliver no byte
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_after_cap: float = 900.0
    block_size: int = 1 << 20
    checkpoint_bytes: int = 64 << 20
    checkpoint_seconds: float = 2.0


@dataclass(slots=True)
class TransferContext:
    """The seams of a transfer: network, clocks, sleep, randomness, progress."""

    client: httpx.AsyncClient
    settings: TransferSettings = field(default_factory=TransferSettings)
    sink: ProgressSink = field(default_factory=NullSink)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    wall_clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    limiter: RateLimiter | None = None


class _Retry(Exception):
    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _AlreadyWhole(Exception):
    """A 416 confirmed that every byte is already here."""


class _Stop(Exception):
    def __init__(self, result: ShardResult) -> None:
        super().__init__(result.detail)
        self.result = result


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - now)
    return None


class _Job:
    """The state of one shard's transfer within one run."""

    def __init__(
        self,
        row: ManifestRow,
        store: Store,
        ctx: TransferContext,
        *,
        expected: dict[str, str],
        claim: Claim | None,
    ) -> None:
        self.row = row
        self.name = row.file_name
        self.store = store
        self.ctx = ctx
        self.expected = expected
        self.claim = claim
        self.part = PartFile(store.part_path(self.name), [RECORD_ALGORITHM, *sorted(expected)])
        self.expected_size: int | None = None
        self.fetched = 0
        self.got_bytes = False
        self._chunks: list[bytes] = []
        self._unreported = 0
        self._buffered = 0
        self._last_checkpoint = (0, 0.0)

    # -- results -------------------------------------------------------------------------

    def _result(
        self, status: DownloadStatus, detail: str | None = None, **extra: Any
    ) -> ShardResult:
        return ShardResult(
            self.name,
            status,
            bytes_done=self.part.size,
            size=self.expected_size,
            bytes_fetched=self.fetched,
            detail=detail,
            **extra,
        )

    def _expired(self, why: str) -> _Stop:
        when = self.row.expires_at
        shown = when.strftime("%Y-%m-%d %H:%M UTC") if when else "an unknown time"
        detail = f"link expired ({why}, expiry {shown}); {self.part.size:,} bytes kept"
        return _Stop(self._result("expired", detail, expired_at=when, hint=EXPIRED_HINT))

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> ShardResult:
        previous = self.store.read(self.name)
        keep = 0
        resumable = previous and previous.status in ("partial", "expired", "failed")
        if previous and resumable and previous.object_path == object_path(self.row.url):
            keep = previous.durable_bytes
            self.expected_size = previous.expected_size
        async with await self.part.open(keep=keep):
            self._last_checkpoint = (self.part.size, self.ctx.monotonic())
            try:
                return await self._loop()
            except _Stop as stop:
                if stop.result.status == "busy":
                    return stop.result  # the shard is someone else's now: touch nothing
                await self._flush()
                try:
                    await self._checkpoint(force=True)
                except _Stop as lost:  # the claim went while we stopped: leave it alone
                    return lost.result
                if stop.result.status in ("expired", "failed"):
                    durable = self._last_checkpoint[0]
                    self._record(stop.result.status, durable=durable, detail=stop.result.detail)
                return stop.result
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self._flush()  # bytes received but not yet written are good
                    await self._checkpoint(force=True)
                raise
            except OSError as exc:
                if is_disk_full(exc):
                    msg = f"the disk is full while writing {self.part.path.name}"
                    hint = (
                        f"{self.part.size:,} bytes of {self.name} were kept up to the last "
                        "checkpoint. Free some space (or use another --root) and run again."
                    )
                    raise DiskFullError(msg, hint=hint) from exc
                raise

    async def _loop(self) -> ShardResult:
        failures, mismatches = 0, 0
        while True:
            self._check_expiry()
            self.got_bytes = False
            try:
                await self._attempt()
            except _AlreadyWhole:
                pass
            except _Retry as retry:
                failures = 1 if self.got_bytes else failures + 1
                if failures > self.ctx.settings.max_attempts:
                    detail = f"gave up after {failures - 1} retries: {retry.reason}"
                    raise _Stop(self._result("failed", detail)) from retry
                await self._wait_before_retry(failures, retry)
                continue
            problem = await self._finalise()
            if problem is None:
                digests = tuple(sorted((await self.part.digests()).items()))
                return self._result("downloaded", digests=digests)
            mismatches += 1
            if mismatches >= 2:
                raise _Stop(self._result("failed", problem))
            await self._start_over(f"{problem}; fetching again from scratch")

    def _check_expiry(self) -> None:
        when = self.row.expires_at
        if when is not None and when.timestamp() <= self.ctx.wall_clock():
            msg = "its 'oe' time has passed"
            raise self._expired(msg)

    async def _wait_before_retry(self, failures: int, retry: _Retry) -> None:
        settings = self.ctx.settings
        if retry.retry_after is not None:
            delay = min(retry.retry_after, settings.retry_after_cap)
        else:
            ceiling = min(settings.backoff_cap, settings.backoff_base * 2 ** (failures - 1))
            delay = ceiling * self.ctx.rng.uniform(0.5, 1.0)
        self.ctx.sink.note(self.name, f"{retry.reason}; retry {failures} in {delay:.1f}s")
        await self._checkpoint(force=True)
        await self.ctx.sleep(delay)

    # -- one request -----------------------------------------------------------------------

    async def _attempt(self) -> None:
        await self.part.drain()  # the resume offset must be on disk (or its error raised)
        offset = self.part.size
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with asyncio.timeout(self.ctx.settings.stall_timeout):
                request = self.ctx.client.build_request("GET", self.row.url, headers=headers)
                response = await self.ctx.client.send(request, stream=True)
        except TimeoutError as exc:
            msg = "no answer from the server"
            raise _Retry(msg) from exc
        except httpx.TransportError as exc:
            msg = f"network error ({type(exc).__name__})"
            raise _Retry(msg) from exc
        try:
            await self._accept(response, offset)
            self.ctx.sink.started(self.name, self.expected_size, self.part.size)
            await self._receive(response)
        finally:
            await response.aclose()

    async def _accept(self, response: httpx.Response, offset: int) -> None:
        code = response.status_code
        if code == 206:
            await self._accept_partial(response, offset)
        elif code == 200:
            self._learn_size(_int_header(response, "Content-Length"))
            if offset:
                await self._start_over("server ignored the Range request; starting over")
        elif code == 416:
            await self._accept_unsatisfiable(response)
        else:
            await self._reject(response)

    async def _accept_partial(self, response: httpx.Response, offset: int) -> None:
        match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", "").strip())
        total = int(match.group(3)) if match and match.group(3) != "*" else None
        if match is None or total is None or int(match.group(1)) != offset:
            shown = response.headers.get("Content-Range", "none")
            msg = f"unusable Content-Range {shown!r} for a resume at byte {offset}"
            raise _Retry(msg)
        if self.expected_size is not None and total != self.expected_size:
            self.expected_size = None  # a different object: keep nothing of the old one
            await self._start_over()  # the retry says why
            msg = f"the file size changed to {total:,} bytes; starting over"
            raise _Retry(msg)
        self._learn_size(total)

    async def _accept_unsatisfiable(self, response: httpx.Response) -> None:
        match = _UNSATISFIED_RE.fullmatch(response.headers.get("Content-Range", "").strip())
        total = int(match.group(1)) if match else None
        if total is not None and total == self.part.size:
            self._learn_size(total)
            raise _AlreadyWhole
        await self._start_over()  # the retry says why
        msg = "server refused the resume point (416); starting over"
        raise _Retry(msg)

    async def _reject(self, response: httpx.Response) -> None:
        code = response.status_code
        body = redact_text((await _read_small(response)).strip())  # a body may echo the URL
        if code == 403 and "expired" in body.lower():
            msg = "the CDN answered 403 'URL signature expired'"
            raise self._expired(msg)
        if code in _RETRYABLE_STATUS:
            now = self.ctx.wall_clock()
            wait = retry_after_seconds(response.headers.get("Retry-After"), now=now)
            msg = f"HTTP {code}"
            raise _Retry(msg, retry_after=wait)
        reason = f"HTTP {code}" + (f" '{body[:80]}'" if body else "")
        hint = _REJECT_HINTS.get(code, "check the link and the manifest")
        raise _Stop(self._result("failed", f"{reason}: {hint}; {self.part.size:,} bytes kept"))

    def _learn_size(self, total: int | None) -> None:
        if total is not None and total != self.expected_size:
            self.expected_size = total
            self._record("partial", durable=self._last_checkpoint[0])

    async def _receive(self, response: httpx.Response) -> None:
        settings = self.ctx.settings
        try:
            with StallWatchdog(settings.stall_timeout) as watchdog:
                await self._stream_into_part(response, watchdog)
        except TimeoutError as exc:
            await self._flush()
            msg = f"no data for {settings.stall_timeout:g}s"
            raise _Retry(msg) from exc
        except httpx.TransportError as exc:
            await self._flush()  # bytes before the drop are good
            msg = f"connection dropped ({type(exc).__name__})"
            raise _Retry(msg) from exc
        await self._flush()
        if self.expected_size is not None and self.part.size < self.expected_size:
            msg = f"connection closed at {self.part.size:,} of {self.expected_size:,} bytes"
            raise _Retry(msg)

    async def _stream_into_part(self, response: httpx.Response, watchdog: StallWatchdog) -> None:
        block_size = self.ctx.settings.block_size
        limiter = self.ctx.limiter
        async for chunk in response.aiter_raw():
            watchdog.fed()
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            self.fetched += len(chunk)
            self.got_bytes = True
            self._unreported += len(chunk)
            if self._unreported >= PROGRESS_EVERY:  # not per chunk: rich takes a lock
                self._report()
            if limiter is not None:
                await limiter.acquire(len(chunk))
            if self._buffered >= block_size or self._checkpoint_due():
                await self._flush()
                await self._checkpoint()
                watchdog.fed()  # a slow disk is not a stalled connection

    def _report(self) -> None:
        if self._unreported:
            self.ctx.sink.advanced(self.name, self._unreported)
            self._unreported = 0

    async def _flush(self) -> None:
        self._report()
        if self._chunks:
            block, self._chunks = self._chunks, []  # written with one writev, never joined
            self._buffered = 0
            await self.part.append(block)

    # -- durability ------------------------------------------------------------------------

    async def _start_over(self, why: str | None = None) -> None:
        """Drop every byte kept so far, on disk and in the record (``why`` is shown, if given)."""
        if why is not None:
            self.ctx.sink.note(self.name, why)
        await self.part.reset()
        self._last_checkpoint = (0, self.ctx.monotonic())
        self._record("partial", durable=0)

    def _ensure_claim(self) -> None:
        if self.claim is not None and not self.claim.heartbeat():
            raise _Stop(self._result("busy", "another process took over this shard's claim"))

    def _checkpoint_due(self) -> bool:
        settings = self.ctx.settings
        done, when = self._last_checkpoint
        if self.part.size - done >= settings.checkpoint_bytes:
            return True
        return self.ctx.monotonic() - when >= settings.checkpoint_seconds

    async def _checkpoint(self, *, force: bool = False) -> None:
        done, _ = self._last_checkpoint
        now = self.ctx.monotonic()
        if not (force or self._checkpoint_due()) or self.part.size == done:
            return
        await self.part.sync()
        self._last_checkpoint = (self.part.size, now)
        self._record("partial", durable=self.part.size)
        self._ensure_claim()

    def _record(self, status: RecordStatus, *, durable: int, **extra: Any) -> None:
        record = Record(
            self.name,
            status,
            expected_size=self.expected_size,
            object_path=object_path(self.row.url),
            durable_bytes=durable,
            **extra,
        )
        self.store.write(record.with_(updated=self.ctx.wall_clock()))

    async def _finalise(self) -> str | None:
        """Check size and digests, then fsync + rename. Returns a problem, or None."""
        size = self.part.size
        if self.expected_size is not None and size != self.expected_size:
            return f"size {size:,} differs from the {self.expected_size:,} bytes announced"
        digests = await self.part.digests()
        for alg, want in sorted(self.expected.items()):
            if digests.get(alg) != want:
                return f"{alg} mismatch: expected {want}, got {digests.get(alg)}"
        await self.part.sync()
        self._ensure_claim()
        os.replace(self.part.path, self.store.final_path(self.name))
        _fsync_dir(self.store.tars)
        self._record("complete", durable=size, size=size, digests=digests)
        return None


class StallWatchdog:
    """Cancels the current task when nothing arrived for ``limit`` seconds.

    One timer per period, re-armed from the time of the last byte, instead of an
    ``asyncio.timeout`` per chunk (tens of thousands of timers a GiB).
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.fired = False

    def fed(self) -> None:
        self.last = self.loop.time()

    def _check(self) -> None:
        if self.loop.time() - self.last >= self.limit:
            self.fired = True
            self.task.cancel()
        else:
            self.handle = self.loop.call_at(self.last + self.limit, self._check)

    def __enter__(self) -> StallWatchdog:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self._cancelling = task.cancelling()
        self.handle = self.loop.call_at(self.last + self.limit, self._check)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.handle.cancel()
        if (
            self.fired
            and kind is asyncio.CancelledError
            and self.task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc


def _fsync_dir(path: os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name, "").strip()
    return int(value) if value.isdigit() else None


async def _read_small(response: httpx.Response, limit: int = 4096) -> str:
    with contextlib.suppress(httpx.ResponseNotRead):
        return response.content[:limit].decode("utf-8", "replace")  # already in memory
    data = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= limit:
                break
    return data[:limit].decode("utf-8", "replace")


async def fetch_shard(
    row: ManifestRow,
    store: Store,
    ctx: TransferContext,
    *,
    expected: dict[str, str] | None = None,
    claim: Claim | None = None,
) -> ShardResult:
    """Download one file into the store, resuming what is there; never raises for the shard."""
    return await _Job(row, store, ctx, expected=expected or {}, claim=claim).run()
