"""Hash algorithms ("alg:hex" registry) and checksum-list formats (GNU and BSD styles)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import xxhash

from sa1b_cli.core.errors import ChecksumFileError
from sa1b_cli.core.files import read_at_most
from sa1b_cli.core.manifest import classify

__all__ = [
    "ALGORITHMS",
    "ChecksumList",
    "Hasher",
    "format_gnu_line",
    "format_hash",
    "load_checksum_lists",
    "parse_checksum_text",
    "parse_hash",
]


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "md5": partial(hashlib.md5, usedforsecurity=False),
    "sha1": partial(hashlib.sha1, usedforsecurity=False),
    "sha256": hashlib.sha256,
    "xxh32": xxhash.xxh32,
    "xxh64": xxhash.xxh64,
    "xxh3_64": xxhash.xxh3_64,
    "xxh128": xxhash.xxh3_128,
}
RECORD_ALGORITHM = "xxh128"
MAX_LIST = 64 << 20  # bytes of one --checksums list (1000 shards take about 100 KB a hash)
# Names users type or tools print, mapped to our registry keys.
_ALIASES = {"xxh3_128": "xxh128", "xxh3": "xxh3_64", "sha-256": "sha256", "sha-1": "sha1"}
_BSD_TAGS = {
    "MD5": "md5",
    "SHA1": "sha1",
    "SHA256": "sha256",
    "XXH32": "xxh32",
    "XXH64": "xxh64",
    "XXH3": "xxh3_64",
    "XXH128": "xxh128",
}
_GNU_BY_LENGTH = {8: "xxh32", 16: "xxh64", 40: "sha1", 64: "sha256"}
_BSD_RE = re.compile(r"(?P<tag>[A-Z0-9_]+) ?\((?P<name>.+)\) ?= ?(?P<hex>[0-9a-fA-F]+)")
_GNU_RE = re.compile(r"(?:XXH3_)?(?P<hex>[0-9a-fA-F]{8,64}) [ *](?P<name>.+)")


def canonical_algorithm(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in ALGORITHMS:
        msg = f"unknown hash algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}"
        raise ChecksumFileError(msg)
    return key


def parse_hash(value: str) -> tuple[str, str]:
    """``"xxh128:ABCD"`` -> ``("xxh128", "abcd")``."""
    alg, sep, hexdigest = value.partition(":")
    if not sep:
        msg = f"expected 'algorithm:hexdigest', got {value!r}"
        raise ChecksumFileError(msg)
    return canonical_algorithm(alg), hexdigest.lower()


def format_hash(alg: str, hexdigest: str) -> str:
    return f"{alg}:{hexdigest.lower()}"


def format_gnu_line(alg: str, hexdigest: str, name: str) -> str:
    """One line in the format the tool of ``alg`` checks with ``-c``."""
    if alg == "xxh3_64":
        return f"XXH3 ({name}) = {hexdigest}"
    return f"{hexdigest}  {name}"


@dataclass(frozen=True, slots=True)
class ChecksumList:
    """Expected digests by file name, for one or more algorithms."""

    entries: dict[str, dict[str, str]]  # file name -> {alg: hex}
    sources: tuple[str, ...] = ()

    def expected(self, name: str) -> dict[str, str]:
        return self.entries.get(name, {})

    def algorithms(self) -> set[str]:
        return {alg for digests in self.entries.values() for alg in digests}


def _guess_32_hex(path_hint: str) -> str:
    # md5 and xxh128 both print 32 hex digits; the file name is the only clue.
    return "xxh128" if "xxh" in path_hint.lower() else "md5"


def parse_checksum_text(text: str, *, source: str, algorithm: str | None = None) -> ChecksumList:
    """Parse md5sum/sha256sum/xxhsum (GNU) or BSD-tag lines; comments and blanks are skipped."""
    entries: dict[str, dict[str, str]] = {}
    others = 0  # lines for files no manifest serves (sa_1.jpg...): checked, not kept
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        alg, name, hexdigest = _parse_line(line, source, number, algorithm)
        # Lists name files with or without folders. (Not pathlib: it interns every part.)
        name = name.replace("\\", "/").rsplit("/", 1)[-1]
        if classify(name) == "unknown":  # kept, 1.3 M such lines took 900 MB
            others += 1
            continue
        previous = entries.setdefault(name, {}).get(alg)
        if previous and previous != hexdigest:
            msg = f"{source}, line {number}: two different {alg} digests for {name}"
            raise ChecksumFileError(msg)
        entries[name][alg] = hexdigest
    if not entries:
        what = f"{others:,} lines, none for an SA-1B file" if others else "no checksum lines"
        msg = f"{source}: {what}"
        raise ChecksumFileError(msg, hint="Expected lines like '<hex>  sa_000000.tar'.")
    return ChecksumList(entries, (source,))


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` one at a time: a list of them (``splitlines``), or a StringIO
    (4 bytes a character), took 100-240 MB more for a 60 MiB list."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        yield text[start:end]
        start = end + 1


def _parse_line(line: str, source: str, number: int, forced: str | None) -> tuple[str, str, str]:
    if match := _BSD_RE.fullmatch(line):
        tag = match.group("tag").upper()
        if tag not in _BSD_TAGS:
            msg = f"{source}, line {number}: unknown algorithm tag {tag!r}"
            raise ChecksumFileError(msg)
        return _BSD_TAGS[tag], match.group("name"), match.group("hex").lower()
    if match := _GNU_RE.fullmatch(line):
        hexdigest = match.group("hex").lower()
        if line.startswith("XXH3_"):
            return "xxh3_64", match.group("name"), hexdigest
        alg = forced or (_guess_32_hex(source) if len(hexdigest) == 32 else None)
        alg = alg or _GNU_BY_LENGTH.get(len(hexdigest))
        if alg is None:
            msg = f"{source}, line {number}: a {len(hexdigest)}-digit hash matches no algorithm"
            raise ChecksumFileError(msg)
        return alg, match.group("name"), hexdigest
    msg = f"{source}, line {number}: not a checksum line: {line[:60]!r}"
    raise ChecksumFileError(msg, hint="Supported: md5sum, sha256sum, xxhsum and BSD-tag formats.")


def load_checksum_lists(specs: Iterable[str]) -> ChecksumList:
    """Read every ``[alg:]PATH`` given with --checksums and merge them."""
    merged: dict[str, dict[str, str]] = {}
    sources: list[str] = []
    for spec in specs:
        alg, path = _split_spec(spec)
        try:
            text = read_at_most(Path(path), MAX_LIST).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            msg = f"cannot read checksum list {path}: {why}"
            raise ChecksumFileError(msg) from exc
        parsed = parse_checksum_text(text, source=path, algorithm=alg)
        for name, digests in parsed.entries.items():
            for key, value in digests.items():
                known = merged.setdefault(name, {}).get(key)
                if known and known != value:
                    msg = f"{path}: {name} has {key} {value}, another list says {known}"
                    raise ChecksumFileError(msg, hint="Pass only lists that agree.")
                merged[name][key] = value
        sources.append(path)
    return ChecksumList(merged, tuple(sources))


def _split_spec(spec: str) -> tuple[str | None, str]:
    head, sep, tail = spec.partition(":")
    if sep and head.lower() in {*ALGORITHMS, *_ALIASES} and not Path(spec).exists():
        return canonical_algorithm(head), tail
    return None, spec
