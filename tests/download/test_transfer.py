"""The one-connection resume state machine against every server behaviour (MockTransport).

Parallel segments have their own tests in test_segments.py."""

from __future__ import annotations

import errno
import hashlib
import json
import random
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import xxhash

from sa1b_cli.core.manifest import ManifestRow, expiry_of
from sa1b_cli.core.store import Record, RecordStatus, Store
from sa1b_cli.download.accept import retry_after_seconds
from sa1b_cli.download.controller import ConnectionController, ControllerSettings
from sa1b_cli.download.transfer import ShardTask, TransferContext, TransferSettings, fetch_shard
from tests.fakecdn import FakeCDN, url_for

NAME = "sa_000001.tar"
NOW = 1_800_000_000.0


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def row_for(name: str = NAME, *, oe: int = 0x7FFFFFFF) -> ManifestRow:
    url = url_for(name, oe=oe)
    return ManifestRow(name, url, "shard", 2, expiry_of(url))


async def fetch(
    cdn: FakeCDN,
    store: Store,
    *,
    row: ManifestRow | None = None,
    expected=None,
    stall: float = 5.0,
    sleeps: Sleeps | None = None,
    attempts: int = 8,
    claim=None,
    piece: int = 4 << 20,
):
    settings = TransferSettings(
        stall_timeout=stall,
        max_attempts=attempts,
        block_size=50_000,
        split=False,
        min_piece=piece,
        reserve=min(piece, 4 << 20),
    )
    async with httpx.AsyncClient(transport=cdn.transport()) as client:
        ctx = TransferContext(
            client, settings, sleep=sleeps or Sleeps(), wall_clock=lambda: NOW, rng=random.Random(1)
        )
        return await fetch_shard(
            ShardTask(row or row_for(), expected or {}, claim=claim), store, ctx
        )


def seed_partial(
    store: Store, *, durable: int, status: RecordStatus = "partial", size: int | None = None
):
    """A record as an earlier run would have left it for a half-downloaded shard."""
    store.write(
        Record(
            NAME,
            status,
            expected_size=size,
            object_path=f"/m1/v/t6/{NAME}",
            durable_bytes=durable,
        )
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "root").ensure()


def final_bytes(store: Store) -> bytes:
    return store.final_path(NAME).read_bytes()


async def test_plain_download_is_whole_and_recorded(store, payload):
    cdn = FakeCDN({NAME: payload})
    result = await fetch(cdn, store)
    assert result.status == "downloaded"
    assert final_bytes(store) == payload
    assert not store.part_path(NAME).exists()
    record = store.read(NAME)
    assert record is not None and record.status == "complete"
    assert record.digests["xxh128"] == xxhash.xxh3_128(payload).hexdigest()
    assert cdn.seen[0].accept_encoding == "identity"
    assert cdn.seen[0].raw_query.startswith(b"_nc_gid&ccb=10-5")  # passed through byte for byte


async def test_drop_mid_body_resumes_from_the_bytes_received(store, payload):
    sleeps = Sleeps()
    cdn = FakeCDN({NAME: payload}, faults=["drop:120000"])
    result = await fetch(cdn, store, sleeps=sleeps)
    assert result.status == "downloaded"
    assert final_bytes(store) == payload
    assert [s.range for s in cdn.seen] == [None, "bytes=120000-"]
    assert len(sleeps.calls) == 1


async def test_200_to_a_range_request_starts_over(store, payload):
    cdn = FakeCDN({NAME: payload}, faults=["drop:100000", "ignore_range"])
    result = await fetch(cdn, store)
    assert result.status == "downloaded"
    assert final_bytes(store) == payload  # not the first 100000 bytes twice
    assert cdn.seen[1].range == "bytes=100000-"


async def test_content_range_starting_elsewhere_is_never_appended(store, payload):
    cdn = FakeCDN({NAME: payload}, faults=["drop:100000", "wrong_range"])
    result = await fetch(cdn, store)
    assert result.status == "downloaded"
    assert final_bytes(store) == payload
    assert [s.range for s in cdn.seen] == [None, "bytes=100000-", "bytes=100000-"]


async def test_a_total_that_changes_fails_the_shard_and_keeps_its_bytes(store, payload):
    cdn = FakeCDN({NAME: payload}, faults=["drop:100000", "size_changed"])
    result = await fetch(cdn, store)
    assert result.status == "failed"
    assert "the server now says" in (result.detail or "") and "it said" in (result.detail or "")
    assert not store.final_path(NAME).exists()
    assert result.bytes_done == 100_000  # what came before is kept for a later run
    # Every later run fails the same way if the file did change: the hint says the way out.
    record, part = store.record_path(NAME), store.part_path(NAME)
    assert result.hint is not None and f"delete {record} and {part}" in result.hint
    record.unlink()
    part.unlink()
    again = await fetch(FakeCDN({NAME: payload}), store)
    assert again.status == "downloaded" and final_bytes(store) == payload


async def test_416_with_matching_size_finishes_without_refetching(store, payload):
    store.part_path(NAME).write_bytes(payload)
    seed_partial(store, durable=len(payload), size=len(payload))
    cdn = FakeCDN({NAME: payload})
    result = await fetch(cdn, store)
    assert result.status == "downloaded" and result.bytes_fetched == 0
    assert final_bytes(store) == payload


async def test_416_with_other_size_is_not_done(store, payload):
    store.part_path(NAME).write_bytes(payload + b"extra")
    seed_partial(store, durable=len(payload) + 5)
    cdn = FakeCDN({NAME: payload})
    result = await fetch(cdn, store)
    assert result.status == "downloaded"
    assert final_bytes(store) == payload
    assert cdn.seen[0].range == f"bytes={len(payload) + 5}-" and cdn.seen[1].range is None


async def test_403_expired_stops_at_once_and_keeps_bytes(store, payload):
    sleeps = Sleeps()
    cdn = FakeCDN({NAME: payload}, faults=["drop:100000", "status:403:URL signature expired"])
    result = await fetch(cdn, store, sleeps=sleeps)
    assert result.status == "expired"
    assert len(cdn.seen) == 2 and len(sleeps.calls) == 1  # no retry spent on the 403
    assert store.part_path(NAME).stat().st_size == 100000
    assert "fresh manifest" in (result.hint or "")
    assert "SECRETSIG" not in (result.detail or "")


async def test_oe_in_the_past_sends_no_request(store, payload):
    cdn = FakeCDN({NAME: payload})
    result = await fetch(cdn, store, row=row_for(oe=int(NOW) - 60))
    assert result.status == "expired" and cdn.seen == []
    assert result.expired_at == datetime.fromtimestamp(int(NOW) - 60, tz=UTC)


async def test_403_other_fails_without_retries(store, payload):
    cdn = FakeCDN({NAME: payload}, faults=["status:403:URL signature mismatch"])
    result = await fetch(cdn, store)
    assert result.status == "failed" and len(cdn.seen) == 1
    assert "signature mismatch" in (result.detail or "")


async def test_429_honours_retry_after(store, payload):
    sleeps = Sleeps()
    cdn = FakeCDN({NAME: payload}, faults=["status:429:slow down|7"])
    result = await fetch(cdn, store, sleeps=sleeps)
    assert result.status == "downloaded"
    assert sleeps.calls == [7.0]


async def test_5xx_backs_off_exponentially_with_jitter_then_gives_up(store, payload):
    sleeps = Sleeps()
    cdn = FakeCDN({NAME: payload}, faults=["status:503"] * 10)
    result = await fetch(cdn, store, sleeps=sleeps, attempts=4)
    assert result.status == "failed" and "HTTP 503" in (result.detail or "")
    assert len(sleeps.calls) == 4
    for n, delay in enumerate(sleeps.calls):
        assert 0.5 * 2**n <= delay <= 2**n


async def test_a_trickle_does_not_renew_the_budget(store, payload):
    faults = [f"drop:{10_000}"] * 12  # each attempt brings a little, never a whole piece
    cdn = FakeCDN({NAME: payload}, faults=faults)
    result = await fetch(cdn, store, attempts=3, piece=200_000)
    assert result.status == "failed"
    assert "gave up after 4 attempts" in (result.detail or "")
    assert len(cdn.seen) == 4


async def test_the_budget_is_renewed_by_whole_pieces_landing(store, payload):
    faults = ["drop:45000"] * 5  # more drops than max_attempts, each brings a whole piece
    cdn = FakeCDN({NAME: payload}, faults=faults)
    result = await fetch(cdn, store, attempts=3, piece=40_000)
    assert result.status == "downloaded"
    assert final_bytes(store) == payload


async def test_stall_is_dropped_and_resumed(store, payload):
    cdn = FakeCDN({NAME: payload}, faults=["stall:70000"])
    result = await fetch(cdn, store, stall=0.2)
    assert result.status == "downloaded"
    assert final_bytes(store) == payload
    assert cdn.seen[1].range == "bytes=70000-"


async def test_expected_digest_mismatch_refetches_once_then_fails(store, payload):
    expected = {"md5": "0" * 32}
    cdn = FakeCDN({NAME: payload})
    result = await fetch(cdn, store, expected=expected)
    assert result.status == "failed"
    assert hashlib.md5(payload).hexdigest() in (result.detail or "")
    assert "0" * 32 in (result.detail or "")
    assert len(cdn.seen) == 2
    assert not store.final_path(NAME).exists()


async def test_expected_digest_match_is_recorded(store, payload):
    expected = {"md5": hashlib.md5(payload).hexdigest()}
    result = await fetch(FakeCDN({NAME: payload}), store, expected=expected)
    assert result.status == "downloaded"
    record = json.loads(store.record_path(NAME).read_text())
    assert record["digests"]["md5"] == expected["md5"]


async def test_resume_after_restart_uses_checkpoint_and_rehashes_prefix(store, payload):
    store.part_path(NAME).write_bytes(payload[:150_000] + b"garbage after the last fsync")
    seed_partial(store, durable=150_000, size=len(payload))
    cdn = FakeCDN({NAME: payload})
    result = await fetch(cdn, store)
    assert result.status == "downloaded"
    assert cdn.seen[0].range == "bytes=150000-"
    assert store.read(NAME).digests["xxh128"] == xxhash.xxh3_128(payload).hexdigest()  # type: ignore[union-attr]


async def test_refreshed_link_with_same_object_path_continues(store, payload):
    store.part_path(NAME).write_bytes(payload[:150_000])
    seed_partial(store, durable=150_000, status="expired", size=len(payload))
    result = await fetch(FakeCDN({NAME: payload}), store, row=row_for(oe=0x7FFFFFF0))
    assert result.status == "downloaded" and result.bytes_fetched == len(payload) - 150_000


def test_retry_after_parses_seconds_and_dates():
    assert retry_after_seconds("12", now=0) == 12
    assert retry_after_seconds("Thu, 01 Jan 1970 00:01:00 GMT", now=30) == 30
    assert retry_after_seconds("soon", now=0) is None


async def test_a_lost_claim_stops_the_shard_without_touching_it(store, payload):
    from sa1b_cli.core.claims import Claim, try_claim

    claim = try_claim(store.claims / f"{NAME}.claim")
    assert isinstance(claim, Claim)
    (store.claims / f"{NAME}.claim").write_text(
        '{"host": "x", "pid": 1, "token": "theirs", "started": 0}'
    )
    result = await fetch(FakeCDN({NAME: payload}), store, claim=claim)
    assert result.status == "busy"
    assert not store.final_path(NAME).exists()


@pytest.mark.parametrize(
    "echo",
    [
        "bad signature oh=00_SECRETSIG&oe=7FFFFFFF",
        f"denied {url_for(NAME)}",
    ],
)
async def test_a_cdn_error_body_never_shows_the_signed_query(store, payload, echo):
    cdn = FakeCDN({NAME: payload}, faults=[f"status:403:{echo}"])
    result = await fetch(cdn, store)
    assert result.status == "failed" and result.detail
    assert "SECRET" not in result.detail and "7FFFFFFF" not in result.detail


async def test_requests_carry_what_the_client_s_build_request_would_give_them(store, payload):
    cdn, seen = FakeCDN({NAME: payload}), []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return cdn.handle(request)

    headers = {"User-Agent": "sa1b/test", "X-Site": "1"}
    transport = httpx.MockTransport(handle)
    async with httpx.AsyncClient(transport=transport, headers=headers, timeout=7.0) as client:
        ctx = TransferContext(client, TransferSettings(split=False), wall_clock=lambda: NOW)
        result = await fetch_shard(ShardTask(row_for()), store, ctx)
        built = client.build_request("GET", row_for().url, headers={"Accept-Encoding": "identity"})
    assert result.status == "downloaded"
    (sent,) = seen
    assert sent.url.raw_path == built.url.raw_path  # the signed query, byte for byte
    assert sent.headers.multi_items() == built.headers.multi_items()
    assert sent.extensions["timeout"] == built.extensions["timeout"]


async def test_a_dead_server_is_given_up_within_about_two_minutes_on_defaults(store, payload):
    """Each attempt costs one timeout (30 s here, on a fake clock); patience bounds the total."""
    clock = [NOW]

    def dead(request: httpx.Request) -> httpx.Response:
        clock[0] += 30.0  # headers then silence: one read timeout per attempt
        msg = "no data before the read timeout"
        raise httpx.ReadTimeout(msg, request=request)

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    async with httpx.AsyncClient(transport=httpx.MockTransport(dead)) as client:
        ctx = TransferContext(
            client,
            TransferSettings(split=False),
            sleep=sleep,
            wall_clock=lambda: NOW,
            monotonic=lambda: clock[0],
            rng=random.Random(1),
        )
        result = await fetch_shard(ShardTask(row_for()), store, ctx)
    assert result.status == "failed" and "without progress" in (result.detail or "")
    assert "ReadTimeout" in (result.detail or "")
    assert clock[0] - NOW <= 160  # about two minutes, not 8 attempts with a minute's backoff


class EndlessStream(httpx.AsyncByteStream):
    """A body with no length that never ends; counts what was taken from it."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += 64 << 10
            yield bytes(64 << 10)


async def test_a_body_of_no_size_that_never_ends_fails_its_shard_and_keeps_nothing(store):
    """No size known (no probe, record or list), no Content-Length: the ceiling stops it."""
    streams: list[EndlessStream] = []

    def endless(request: httpx.Request) -> httpx.Response:
        streams.append(EndlessStream())
        return httpx.Response(200, stream=streams[-1])

    settings = TransferSettings(split=False, block_size=50_000, max_unsized=1 << 20)
    async with httpx.AsyncClient(transport=httpx.MockTransport(endless)) as client:
        ctx = TransferContext(client, settings, sleep=Sleeps(), wall_clock=lambda: NOW)
        result = await fetch_shard(ShardTask(row_for()), store, ctx)
    assert result.status == "failed"
    assert result.detail == (
        "the server sent more than 1.0 MiB without saying a size "
        "(no SA-1B file comes near that); 0 B kept"
    )
    assert len(streams) == 1 and streams[0].sent < 2 << 20  # one request, read no further
    assert not store.final_path(NAME).exists()
    part = store.part_path(NAME)
    assert not part.exists() or part.stat().st_size == 0  # not the file: nothing kept
    record = store.read(NAME)
    assert record is not None and record.status == "failed" and not record.durable_bytes


async def test_a_drop_without_split_does_not_take_connections_from_the_run(store, payload):
    """Only a shard fetched in pieces answers a dropped connection by asking for fewer."""
    cdn = FakeCDN({NAME: payload}, faults=["drop:120000"])
    controller = ConnectionController(ControllerSettings(ceiling=8, initial=8))
    async with httpx.AsyncClient(transport=cdn.transport()) as client:
        ctx = TransferContext(
            client,
            TransferSettings(split=False),
            sleep=Sleeps(),
            wall_clock=lambda: NOW,
            controller=controller,
        )
        result = await fetch_shard(ShardTask(row_for()), store, ctx)
    assert result.status == "downloaded" and final_bytes(store) == payload
    assert controller.limit == 8


def _failing_connect(cause: Exception, asked: list[httpx.Request]):  # type: ignore[no-untyped-def]
    """A transport whose connect fails with ``cause``, its message quoting the whole link."""

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request) from cause

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("cause", "says", "requests"),
    [
        (
            ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify"),
            "the server's TLS certificate is not trusted",
            1,  # not retried: every attempt would fail the same way
        ),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "(connection refused)", 3),
        (socket.gaierror(socket.EAI_NONAME, "no name"), "(the host name does not resolve)", 3),
        (OSError(errno.ENETUNREACH, "unreachable"), "(Network is unreachable)", 3),
        (UnicodeError("label empty or too long"), "(the host is not a usable name)", 1),
    ],
)
async def test_a_failed_connect_is_named_by_its_cause_never_by_the_link(
    store, cause, says, requests
):
    asked: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=_failing_connect(cause, asked)) as client:
        ctx = TransferContext(
            client,
            TransferSettings(split=False, max_attempts=2),
            sleep=Sleeps(),
            wall_clock=lambda: NOW,
            rng=random.Random(1),
        )
        result = await fetch_shard(ShardTask(row_for()), store, ctx)
    detail = result.detail or ""
    assert result.status == "failed" and says in detail, detail
    assert len(asked) == requests
    assert "oh=" not in detail and "cdn" not in detail  # the message quoted the signed link
    if isinstance(cause, ssl.SSLError):
        assert "SSL_CERT_FILE" in detail  # what to do about it
