"""The community md5 list: fetched by hash, cached, judged; offline and corrupt cases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from sa1b_cli.core.errors import KnownListError
from sa1b_cli.core.known import (
    CACHE,
    MIRROR_BAD_MD5,
    SHA256,
    URL,
    KnownSource,
    cached_known,
    fetch_known,
    load_known,
    remember_mismatch,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "community-md5-checklist.txt"
SMALL = b"0123456789abcdef0123456789abcdef  sa_000000.tar\n" + (
    b"ffffffffffffffffffffffffffffffff  sa_000014.tar\n"
)


def small_source() -> KnownSource:
    return KnownSource(
        "https://example.test/list.txt?token=secret", hashlib.sha256(SMALL).hexdigest()
    )


def serve(data: bytes) -> tuple[list[str], object]:
    asked: list[str] = []

    def get(url: str) -> bytes:
        asked.append(url)
        return data

    return asked, get


def test_the_pin_is_the_commit_and_hash_of_the_community_list():
    assert URL.startswith("https://raw.githubusercontent.com/XuyangShen/SA-1B-Fast-Downloader/")
    assert "b0fd50b9fcd01159a1f7f2aa01f5a6e7b6f5b547" in URL
    assert SHA256 == "b4605463937e545ac2e9a9f53c4212a6985ad4997d3c6eb572086ad0d2ef77e6"
    assert MIRROR_BAD_MD5["sa_000014.tar"] == "45e15f9ff5ded968abe4eb01b95be29a"


@pytest.mark.skipif(not SHARED.is_file(), reason="../shared/community-md5-checklist.txt is absent")
def test_the_real_list_passes_its_pin_and_is_cached(tmp_path: Path):
    asked, get = serve(SHARED.read_bytes())
    known = fetch_known(tmp_path, KnownSource(), get=get)  # type: ignore[arg-type]
    assert asked == [URL]
    assert len(known.md5) == 1000 and known.md5["sa_000000.tar"] != MIRROR_BAD_MD5.get("x")
    assert (tmp_path / CACHE).read_bytes() == SHARED.read_bytes()
    again = cached_known(tmp_path, KnownSource())
    assert again is not None and again.md5 == known.md5
    # The mirrors' copies of these four shards are named as such, never as mere mismatches.
    for name, bad in MIRROR_BAD_MD5.items():
        assert known.judge(name, bad) == "mirror_bad"
        assert known.judge(name, known.md5[name]) == "match"


def test_a_corrupt_download_is_refused_and_not_cached(tmp_path: Path):
    _, get = serve(SMALL.replace(b"0123", b"3210"))
    with pytest.raises(KnownListError, match="sha256") as caught:
        fetch_known(tmp_path, small_source(), get=get)  # type: ignore[arg-type]
    assert not (tmp_path / CACHE).exists()
    assert "secret" not in str(caught.value) + str(caught.value.hint)


def test_no_network_says_what_to_do_and_hides_the_query(tmp_path: Path):
    def offline(url: str) -> bytes:
        raise httpx.ConnectError(f"[Errno -3] name resolution failed for {url}")

    with pytest.raises(KnownListError) as caught:
        fetch_known(tmp_path, small_source(), get=offline)
    assert "cannot fetch the community md5 list" in caught.value.message
    assert "secret" not in caught.value.message + str(caught.value.hint)
    assert str(tmp_path / CACHE) in str(caught.value.hint)
    assert "--checksums md5:FILE" in str(caught.value.hint)


def test_load_known_fetches_only_when_asked(tmp_path: Path):
    asked, get = serve(SMALL)
    source = small_source()
    assert load_known(tmp_path, None, source=source, get=get) is None  # type: ignore[arg-type]
    assert asked == []
    assert load_known(tmp_path, True, source=source, get=get) is not None  # type: ignore[arg-type]
    assert load_known(tmp_path, None, source=source, get=get) is not None  # type: ignore[arg-type]
    assert load_known(tmp_path, False, source=source, get=get) is None  # type: ignore[arg-type]
    assert len(asked) == 1


def test_a_damaged_cache_is_dropped(tmp_path: Path):
    (tmp_path / CACHE).parent.mkdir()
    (tmp_path / CACHE).write_bytes(SMALL + b"# edited\n")
    assert cached_known(tmp_path, small_source()) is None
    assert not (tmp_path / CACHE).exists()


def test_verdicts(tmp_path: Path):
    _, get = serve(SMALL)
    known = fetch_known(tmp_path, small_source(), get=get)  # type: ignore[arg-type]
    assert known.judge("sa_000000.tar", "0123456789abcdef0123456789abcdef") == "match"
    assert known.judge("sa_000000.tar", "1" * 32) == "mismatch"
    assert known.judge("sa_000014.tar", MIRROR_BAD_MD5["sa_000014.tar"]) == "mirror_bad"
    assert known.judge("sa_000999.tar", "1" * 32) == "unlisted"


def test_bad_copies_can_come_from_a_file(tmp_path: Path):
    table = tmp_path / "bad.md5"
    table.write_text(f"{'a' * 32}  sa_000003.tar\n")
    source = KnownSource.from_env({"SA1B_KNOWN_BAD": str(table), "SA1B_KNOWN_SHA256": "AB"})
    assert dict(source.bad) == {"sa_000003.tar": "a" * 32}
    assert source.sha256 == "ab" and source.url == URL


def test_a_second_copy_that_disagrees_is_a_dispute(tmp_path: Path):
    assert remember_mismatch(tmp_path, "sa_000001.tar", "1" * 32, 100) is False
    assert remember_mismatch(tmp_path, "sa_000001.tar", "1" * 32, 100) is False  # same copy
    assert remember_mismatch(tmp_path, "sa_000002.tar", "2" * 32, 100) is False
    assert remember_mismatch(tmp_path, "sa_000001.tar", "1" * 32, 200) is True  # a fresh copy


class Counted(httpx.SyncByteStream):
    """``chunk`` ``count`` times (or without end); counts the chunks taken."""

    def __init__(self, chunk: bytes, count: int | None) -> None:
        self.chunk, self.count, self.taken = chunk, count, 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        while self.count is None or self.taken < self.count:
            self.taken += 1
            yield self.chunk


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_the_list_is_read_as_it_comes_and_never_past_its_bound(encoding):
    """An endless body, or a gzip bomb (64 KiB that inflate to 64 MiB each), is cut at
    MAX_BYTES: what was taken stays near it, not the whole body."""
    import zlib

    from sa1b_cli.core.known import MAX_BYTES, _http_get

    if encoding:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        chunk = packer.compress(bytes(64 << 20)) + packer.flush(zlib.Z_SYNC_FLUSH)
    else:
        chunk = bytes(64 << 10)
    body = Counted(chunk, 4 if encoding else 200)  # 256 MiB inflated, or 12.5 MiB
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["Accept-Encoding"])
        headers = {"Content-Encoding": encoding} if encoding else {}
        return httpx.Response(200, headers=headers, stream=body)

    with pytest.raises(ValueError, match="too large for the md5 list"):
        _http_get("https://example.test/list.txt", transport=httpx.MockTransport(answer))
    assert asked == ["identity"]
    assert body.taken == (1 if encoding else MAX_BYTES // len(chunk) + 1)
