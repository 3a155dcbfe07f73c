"""The community md5 list: the only full set of known-good digests for SA-1B, fetched by hash.

Meta publishes no checksums. In 2024 a community downloader computed the md5 of all 1000
shards as served by Meta's own CDN (XuyangShen/SA-1B-Fast-Downloader, ``checklist.txt``).
sa1b fetches that file from a pinned commit, checks its sha256 and caches it in the root
(``<root>/known/community-md5.txt``), the way pooch fetches a registry: nothing from the
network is trusted unless its hash is the one written here.

Two facts are built in. The Hugging Face mirror (Aber-r/SA-1B_backup) and OpenDataLab's
mirror serve the same bytes, and their copies of shards 14, 16, 17 and 19 are corrupt; we
know those copies' md5s, so such a shard is named for what it is. Mirrors also pass round
"corrected" lists that disagree with the community list on exactly those shards: the
community list came from Meta's CDN, so it wins.

``SA1B_KNOWN_URL``, ``SA1B_KNOWN_SHA256`` and ``SA1B_KNOWN_BAD`` (an md5sum-style file of
known-bad copies) replace the pinned address, hash and table: for an internal mirror of
the list, and for tests that cannot forge a real shard's md5.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sa1b_cli.core.checksums import parse_checksum_text
from sa1b_cli.core.errors import ChecksumFileError, KnownListError
from sa1b_cli.core.store import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import httpx

__all__ = [
    "KnownList",
    "KnownSource",
    "Verdict",
    "cached_known",
    "fetch_known",
    "load_known",
    "remember_mismatch",
]

COMMIT = "b0fd50b9fcd01159a1f7f2aa01f5a6e7b6f5b547"
URL = f"https://raw.githubusercontent.com/XuyangShen/SA-1B-Fast-Downloader/{COMMIT}/checklist.txt"
SHA256 = "b4605463937e545ac2e9a9f53c4212a6985ad4997d3c6eb572086ad0d2ef77e6"
MIRROR_BAD_MD5 = {
    "sa_000014.tar": "45e15f9ff5ded968abe4eb01b95be29a",
    "sa_000016.tar": "441129d8f0cbed260c8eafaac98b3965",
    "sa_000017.tar": "dade5977ae2736a79dbbed4e9a550ec4",
    "sa_000019.tar": "05f1a621b3f685e5213602b99613eaf6",
}
MIRRORS = "the Hugging Face (Aber-r/SA-1B_backup) and OpenDataLab mirrors"
CACHE = Path("known") / "community-md5.txt"
DISPUTES = Path("known") / "mismatches.json"
MAX_BYTES = 1 << 20  # the real list is 53 KB; anything far larger is not it
_DISPUTES_LOCK = threading.Lock()  # verify hashes shards on several threads

Verdict = Literal["match", "mirror_bad", "mismatch", "unlisted"]


@dataclass(frozen=True, slots=True)
class KnownSource:
    """Where the list comes from and what it must hash to."""

    url: str = URL
    sha256: str = SHA256
    bad: Mapping[str, str] = field(default_factory=lambda: dict(MIRROR_BAD_MD5))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KnownSource:
        env = os.environ if env is None else env
        bad = dict(MIRROR_BAD_MD5)
        if path := env.get("SA1B_KNOWN_BAD"):
            listed = _parse(Path(path).read_bytes(), path)
            bad = {name: digests["md5"] for name, digests in listed.items()}
        url = env.get("SA1B_KNOWN_URL", URL)
        return cls(url, env.get("SA1B_KNOWN_SHA256", SHA256).lower(), bad)

    def public_url(self) -> str:
        return self.url.split("?", 1)[0]  # never show a query string: it may hold a token


@dataclass(frozen=True, slots=True)
class KnownList:
    md5: dict[str, str]  # file name -> md5 from Meta's CDN
    bad: Mapping[str, str]  # file name -> md5 of the corrupt mirror copy
    path: Path  # the cached, hash-checked copy

    def judge(self, name: str, md5: str) -> Verdict:
        want = self.md5.get(name)
        if want is None:
            return "unlisted"
        if md5 == want:
            return "match"
        return "mirror_bad" if self.bad.get(name) == md5 else "mismatch"


def _parse(data: bytes, source: str) -> dict[str, dict[str, str]]:
    try:
        text = data.decode("utf-8")
        return parse_checksum_text(text, source=source, algorithm="md5").entries
    except (UnicodeDecodeError, ChecksumFileError) as exc:
        msg = f"{source} is not an md5 list: {exc}"
        raise KnownListError(msg) from exc


def _checked(data: bytes, source: KnownSource, where: str) -> dict[str, str]:
    got = hashlib.sha256(data).hexdigest()
    if got != source.sha256:
        msg = f"the community md5 list from {where} has sha256 {got}, expected {source.sha256}"
        raise KnownListError(msg, hint="It was not kept. Run again later, or report it.")
    return {name: d["md5"] for name, d in _parse(data, where).items()}


def cached_known(root: Path, source: KnownSource) -> KnownList | None:
    """The cached list, if there is one whose hash still matches (a bad copy is removed)."""
    path = root / CACHE
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        return KnownList(_checked(data, source, str(path)), source.bad, path)
    except KnownListError:
        with contextlib.suppress(OSError):
            path.unlink()  # damaged or from another pin: fetch it afresh next time
        return None


def _http_get(url: str, transport: httpx.BaseTransport | None = None) -> bytes:
    """The body, read as it comes and never past MAX_BYTES (an endless body, a gzip bomb)."""
    import httpx  # only when the list is not cached yet

    data = bytearray()
    client = httpx.Client(timeout=30.0, follow_redirects=True, transport=transport)
    asked = {"Accept-Encoding": "identity"}
    with client, client.stream("GET", url, headers=asked) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > MAX_BYTES:
                msg = f"more than {MAX_BYTES:,} bytes, too large for the md5 list"
                raise ValueError(msg)
    return bytes(data)


def fetch_known(
    root: Path, source: KnownSource, *, get: Callable[[str], bytes] = _http_get
) -> KnownList:
    """Fetch the list once, check its sha256, cache it under the root."""
    try:
        data = get(source.url)
    except Exception as exc:  # any transport or HTTP failure means the same to the user
        reason = str(exc).split("?", 1)[0] or type(exc).__name__
        msg = f"cannot fetch the community md5 list from {source.public_url()}: {reason}"
        hint = (
            f"On a machine with network, fetch {source.public_url()} and copy it to "
            f"{root / CACHE} (its sha256 is checked), or pass it with --checksums md5:FILE."
        )
        raise KnownListError(msg, hint=hint) from exc
    digests = _checked(data, source, source.public_url())
    (root / CACHE).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / CACHE, data)
    return KnownList(digests, source.bad, root / CACHE)


def load_known(
    root: Path,
    want: bool | None,
    *,
    source: KnownSource | None = None,
    get: Callable[[str], bytes] | None = None,
) -> KnownList | None:
    """``want``: True fetches when not cached, None uses a cached copy only, False skips."""
    if want is False:
        return None
    source = source or KnownSource.from_env()
    found = cached_known(root, source)
    if found is not None or want is None:
        return found
    return fetch_known(root, source, get=get or _http_get)


def _disputes(root: Path) -> dict[str, list[list[object]]]:
    try:
        data = json.loads((root / DISPUTES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_mismatch(root: Path, name: str, md5: str, mtime_ns: int) -> bool:
    """Note a copy that disagrees with the list; True when an earlier copy disagreed too.

    A refetched file has a new mtime, so a second entry means a fresh copy: then the
    list, not the copy, may be what is wrong (Meta re-uploaded the shard), and sa1b
    stops fetching it again instead of looping.
    """
    with _DISPUTES_LOCK:
        disputes = _disputes(root)
        copies = disputes.setdefault(name, [])
        if [md5, mtime_ns] not in copies:
            copies.append([md5, mtime_ns])
            (root / DISPUTES).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(root / DISPUTES, json.dumps(disputes, indent=1))
    return any(entry[1] != mtime_ns for entry in copies)
