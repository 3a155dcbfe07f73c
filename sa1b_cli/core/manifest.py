"""Parse Meta's link manifest: classify rows, read expiry, redact signed URLs (pure)."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sa1b_cli.core.errors import ManifestError
from sa1b_cli.core.files import read_at_most
from sa1b_cli.core.text import shown

__all__ = [
    "MAX_MANIFEST",
    "SHARD_COUNT",
    "Manifest",
    "ManifestRow",
    "RowKind",
    "expiry_of",
    "host_of",
    "object_path",
    "parse_manifest",
    "read_manifest",
    "read_manifest_text",
    "redact_text",
    "shard_index",
    "shard_name",
    "usable_host",
]

SHARD_COUNT = 1000
MAX_MANIFEST = 16 << 20  # bytes; Meta's manifest is about 250 KB
RowKind = Literal["shard", "aux", "unknown"]
KNOWN_AUX = frozenset({"sa_images_ids.txt", "sa_co_gold.tar"})
_SHARD_RE = re.compile(r"sa_(\d{6})\.tar", re.ASCII)
# A file name becomes a path under the root, so only a plain, printable name is allowed.
_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One usable manifest row."""

    file_name: str
    url: str
    kind: RowKind
    line: int
    expires_at: datetime | None

    @property
    def index(self) -> int | None:
        return shard_index(self.file_name)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest, keyed by file name."""

    path: Path | None
    rows: dict[str, ManifestRow]
    warnings: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()

    @property
    def shards(self) -> list[ManifestRow]:
        return sorted((r for r in self.rows.values() if r.kind == "shard"), key=_sort_key)

    @property
    def aux(self) -> list[ManifestRow]:
        return sorted((r for r in self.rows.values() if r.kind == "aux"), key=_sort_key)

    @property
    def unknown(self) -> list[ManifestRow]:
        return sorted((r for r in self.rows.values() if r.kind == "unknown"), key=_sort_key)

    @property
    def missing_shards(self) -> list[int]:
        present = {r.index for r in self.rows.values() if r.kind == "shard"}
        return [i for i in range(SHARD_COUNT) if i not in present]

    def expiry_window(self) -> tuple[datetime, datetime] | None:
        times = [r.expires_at for r in self.rows.values() if r.expires_at is not None]
        return (min(times), max(times)) if times else None


@dataclass(slots=True)
class _Builder:
    path: Path | None
    rows: dict[str, ManifestRow] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def shard_index(file_name: str) -> int | None:
    """``sa_000123.tar`` -> 123; anything else -> None."""
    match = _SHARD_RE.fullmatch(file_name)
    return int(match.group(1)) if match else None


def shard_name(index: int) -> str:
    return f"sa_{index:06d}.tar"


def _sort_key(row: ManifestRow) -> tuple[int, str]:
    index = row.index
    return (index if index is not None else SHARD_COUNT, row.file_name)


def classify(file_name: str) -> RowKind:
    if _SHARD_RE.fullmatch(file_name) and (shard_index(file_name) or 0) < SHARD_COUNT:
        return "shard"
    return "aux" if file_name in KNOWN_AUX else "unknown"


def expiry_of(url: str) -> datetime | None:
    """The ``oe`` query value (hex Unix time, UTC) as a datetime, or None."""
    for part in urlsplit(url).query.split("&"):
        key, sep, value = part.partition("=")
        if key == "oe" and sep:
            try:
                return datetime.fromtimestamp(int(value, 16), tz=UTC)
            except (ValueError, OverflowError, OSError):
                return None
    return None


def object_path(url: str) -> str:
    """The URL path: stable across manifest refreshes (edge host names may vary)."""
    return urlsplit(url).path


_URL_QUERY_RE = re.compile(r"(https?://[^\s?'\"<>]+)\?[^\s'\"<>]*")


# The CDN's signing parameters, wherever they appear (a body may quote them without the URL).
_SIGNED_PARAM_RE = re.compile(r"\b(oh|oe|_nc_sid|_nc_ohc|_nc_ht)=[\w.~%-]*")


_URL_USERINFO_RE = re.compile(r"(https?://)[^\s/?#@'\"<>]+@")


def usable_host(host: str) -> bool:
    """Whether ``host`` (bare, as ``urlsplit`` gives it) is an address or a name a resolver
    can be asked for: empty labels, labels past 63 characters and broken ``xn--`` labels
    make the IDNA codec fail, deep inside a connect, and must fail a link instead."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    try:
        host.encode("idna").decode("idna")  # as the resolver, and httpx's ``URL.host``, do
    except UnicodeError:
        return False
    return bool(host)


def redact_text(text: str) -> str:
    """Free text without secrets: URLs lose userinfo and query, loose parameters their value."""
    text = _URL_USERINFO_RE.sub(r"\1<credentials hidden>@", text)
    text = _URL_QUERY_RE.sub(r"\1?<signed query hidden>", text)
    return _SIGNED_PARAM_RE.sub(r"\1=<hidden>", text)


def host_of(url: str) -> str:
    """The server a link names: its host, lowercased, and a port that is not the scheme's
    default ("" if it names none). Never its user, password, path or query."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a malformed address: its requests fail on their own
        return ""
    if ":" in host:
        host = f"[{host}]"
    return host if port in (None, _DEFAULT_PORTS.get(parts.scheme)) else f"{host}:{port}"


def _check_name(name: str, line: int, path: Path | None) -> None:
    if not _SAFE_NAME_RE.fullmatch(name) or ".." in name:
        example = "names must be plain file names such as sa_000000.tar"
        msg = f"unsafe file name '{shown(name, 80)}': {example}"
        raise ManifestError(msg, path=path, line=line)


def _check_url(url: str, line: int, path: Path | None) -> None:
    if any(ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F for c in url):
        msg = "the link holds spaces or control characters"
        raise ManifestError(msg, path=path, line=line)
    try:
        parts = urlsplit(url)
        _ = parts.port  # urlsplit checks the port only when it is asked for
    except ValueError as exc:
        msg = f"the link is not a usable URL ({exc})"
        raise ManifestError(msg, path=path, line=line) from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"the link is not an http(s) URL ({parts.scheme or 'no scheme'})"
        raise ManifestError(msg, path=path, line=line)
    if not usable_host(parts.hostname or ""):
        msg = f"the link's host is not a usable name ({shown(parts.hostname or '', 80)!r})"
        raise ManifestError(msg, path=path, line=line)


def _parse_row(builder: _Builder, raw: str, line: int) -> None:
    fields = raw.split("\t")
    if len(fields) != 2:
        msg = f"expected 2 tab-separated columns, found {len(fields)}"
        raise ManifestError(msg, path=builder.path, line=line)
    name, url = fields[0].strip(), fields[1].strip()
    _check_name(name, line, builder.path)
    _check_url(url, line, builder.path)
    kind = classify(name)
    if kind == "unknown":
        note = f"line {line}: unknown row {name!r} (kept, not selected by default)"
        builder.warnings.append(note)
    if name in builder.rows:
        builder.duplicates.append(name)
        builder.warnings.append(f"line {line}: duplicate row {name!r}; the last one wins")
    builder.rows[name] = ManifestRow(name, url, kind, line, expiry_of(url))


def parse_manifest(text: str, *, path: Path | None = None) -> Manifest:
    """Parse manifest text; tolerates CRLF, a missing final newline and a padded header."""
    builder = _Builder(path)
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or [c.strip() for c in lines[0].split("\t")] != ["file_name", "cdn_link"]:
        msg = "the first line must be the header 'file_name<TAB>cdn_link'"
        raise ManifestError(msg, path=path, line=1)
    for number, raw in enumerate(lines[1:], start=2):
        if raw.strip():
            _parse_row(builder, raw, number)
    if not builder.rows:
        msg = "the manifest has a header but no rows"
        raise ManifestError(msg, path=path)
    return Manifest(path, builder.rows, tuple(builder.warnings), tuple(builder.duplicates))


def _not_text(data: bytes) -> str | None:
    """What a file that is no manifest looks like, judged by its first bytes."""
    if data.startswith(b"\x1f\x8b"):
        return "a gzip stream (an SA-1B shard, perhaps)"
    if data[257:262] == b"ustar":
        return "a tar archive (an SA-1B shard, perhaps)"
    if b"\0" in data[:4096]:
        return "a binary file"
    return None


def read_manifest(path: Path) -> Manifest:
    return parse_manifest(read_manifest_text(path), path=path)


def read_manifest_text(path: Path) -> str:
    """The manifest's text, within MAX_MANIFEST bytes and refused when it is no text."""
    try:
        data = read_at_most(path, MAX_MANIFEST)
    except FileNotFoundError as exc:
        msg = "file not found"
        raise ManifestError(msg, path=path) from exc
    except OSError as exc:
        msg = f"cannot read it ({exc.strerror or exc})"
        raise ManifestError(msg, path=path) from exc
    kind = _not_text(data)
    try:
        text = data.decode("utf-8") if kind is None else ""
    except UnicodeDecodeError:
        kind = "not UTF-8 text"
    if kind is not None:
        msg = f"this is {kind}, not a link manifest"
        raise ManifestError(msg, path=path)
    return text
