"""The root's layout and per-shard records; every state change is an atomic rename.

Layout (everything sa1b owns lives under the root)::

    <root>/tars/<name>           finished shard, bytes exactly as served
    <root>/tars/<name>.part      bytes received so far
    <root>/state/<name>.json     the shard's record (one writer: the claim holder)
    <root>/claims/<name>.claim   who is working on the shard (see claims.py)
    <root>/checksums.xxh128      xxh128 of finished shards, `xxhsum -c` format
    <root>/manifest.tsv          the last manifest used (mode 600: it holds signed links)
    <root>/known/                the community md5 list, sha256-checked (see known.py)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

from sa1b_cli.core.checksums import RECORD_ALGORITHM, format_gnu_line
from sa1b_cli.core.errors import DiskFullError, RootError
from sa1b_cli.core.files import read_at_most, write_all
from sa1b_cli.core.text import escaped

__all__ = [
    "Record",
    "RecordStatus",
    "Store",
    "atomic_text_file",
    "atomic_write_bytes",
    "atomic_write_text",
]

RecordStatus = Literal["partial", "complete", "failed", "expired", "bad"]
CHECKSUM_FILE = "checksums.xxh128"
MAX_RECORD = 16 << 20  # bytes: a record with thousands of spans takes about 100 KB


@dataclass(frozen=True, slots=True)
class Record:
    """What is known about one shard on this root."""

    file_name: str
    status: RecordStatus
    expected_size: int | None = None
    size: int | None = None
    digests: dict[str, str] = field(default_factory=dict)
    object_path: str | None = None
    durable_bytes: int = 0  # fsync'ed bytes from byte 0 without a gap
    spans: list[list[int]] | None = None  # every fsync'ed [start, end) range (parallel ranges)
    detail: str | None = None
    updated: float = 0.0
    host: str | None = None
    tar_deleted: bool = False  # extracted with --delete-tar: done, never fetched again
    # What the bytes were last checked against, as "alg=source" (source: record, list,
    # community), and when: download checks lists on arrival, verify checks them all.
    checked: list[str] = field(default_factory=list)
    checked_at: float = 0.0

    def with_(self, **changes: Any) -> Record:
        return replace(self, **changes)

    def kept_bytes(self) -> int:
        """Bytes of the partial download proven durable (parallel ranges counted too)."""
        if self.spans is None:
            return self.durable_bytes
        return sum(end - start for start, end in self.spans)

    def is_done(self, final_size: int | None) -> bool:
        """Complete and still whole on disk (or extracted and its tar deleted on purpose)."""
        if self.status != "complete":
            return False
        return self.tar_deleted or (final_size is not None and final_size == self.size)


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


def _span(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(map(_count, value))
        and (value[0] < value[1])
    )


def _number(value: object) -> bool:
    return type(value) in (int, float)


def _texts(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _escaped(text: str | None) -> str | None:
    return None if text is None else escaped(text)


def _maybe(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


_text = _maybe(lambda value: isinstance(value, str))
# What each field of a record may hold: on a shared root a record is anybody's file, and a
# size of "12" or a span of [1, 2, 3] ended whole runs in "unexpected error".
_FIELDS: dict[str, Callable[[object], bool]] = {
    "file_name": _text,
    "status": lambda value: isinstance(value, str) and value in get_args(RecordStatus),
    "expected_size": _maybe(_count),
    "size": _maybe(_count),
    "digests": lambda value: isinstance(value, dict) and _texts([*value, *value.values()]),
    "object_path": _text,
    "durable_bytes": _count,
    "spans": _maybe(lambda value: isinstance(value, list) and all(map(_span, value))),
    "detail": _text,
    "updated": _number,
    "host": _text,
    "tar_deleted": lambda value: type(value) is bool,
    "checked": _texts,
    "checked_at": _number,
}


def _disk_full(path: Path) -> DiskFullError:
    msg = f"the disk is full while writing {path.name}"
    hint = "Partial downloads are kept. Free some space and run the same command again."
    return DiskFullError(msg, hint=hint)


def _tmp_name(path: Path) -> Path:
    unique = f"{socket.gethostname()}.{os.getpid()}.{os.urandom(4).hex()}"
    return path.with_name(f".{path.name}.{unique}")


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half.

    ``sync=False`` skips the fsync: still atomic for readers, but a power cut may leave the
    old file or none (for derived files whose loss only means "redo it").
    """
    tmp = _tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if (named := _named(exc, tmp, path)) is not exc:
            raise named from exc
        raise


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644, sync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, sync=sync)


@contextlib.contextmanager
def atomic_text_file(path: Path, *, sync: bool = True) -> Iterator[TextIO]:
    """A text file written a line at a time, seen at ``path`` whole or not at all: for
    lists too long to hold in memory (11 M images at full scale)."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and (named := _named(exc, tmp, path)) is not exc:
            raise named from exc
        raise


def _named(exc: OSError, tmp: Path, path: Path) -> Exception:
    """The error as the caller should see it: about ``path``, never our temporary name."""
    if exc.errno == errno.ENOSPC:
        return _disk_full(path)
    if exc.filename == str(tmp):
        return OSError(exc.errno, exc.strerror, str(path))
    return exc


class Store:
    """Paths and records under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tars = root / "tars"
        self.state = root / "state"
        self.claims = root / "claims"

    def ensure(self) -> Store:
        for folder in (self.tars, self.state, self.claims):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                where = f"the root {self.root}" if exc.filename == str(self.root) else folder
                said = "it is there, not a folder" if exc.errno == errno.EEXIST else exc.strerror
                msg = f"cannot create {where}: {said}"
                raise RootError(msg, hint="Pick another --root or fix its permissions.") from exc
        return self

    def final_path(self, name: str) -> Path:
        return self.tars / name

    def part_path(self, name: str) -> Path:
        return self.tars / f"{name}.part"

    def record_path(self, name: str) -> Path:
        return self.state / f"{name}.json"

    def read(self, name: str) -> Record | None:
        """The shard's record; None when there is none, or it is not one sa1b writes (a
        damaged record means "unknown": the shard is checked again)."""
        try:
            data = json.loads(read_at_most(self.record_path(name), MAX_RECORD, own=True))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("file_name") != name:
            return None
        if not all(key in _FIELDS and _FIELDS[key](value) for key, value in data.items()):
            return None
        record = Record(**data)  # its words are shown: escaped, as sa1b's own already are
        return record.with_(detail=_escaped(record.detail), host=_escaped(record.host))

    def write(self, record: Record) -> None:
        record = record.with_(host=socket.gethostname())
        atomic_write_text(self.record_path(record.file_name), json.dumps(asdict(record), indent=1))

    def records(self) -> dict[str, Record]:
        found: dict[str, Record] = {}
        if not self.state.is_dir():
            return found
        for entry in os.scandir(self.state):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                record = self.read(entry.name[: -len(".json")])
                if record is not None:
                    found[record.file_name] = record
        return found

    def known_names(self) -> set[str]:
        """Every file name the root knows of: recorded, finished or partly downloaded."""
        names = set(self.records())
        if self.tars.is_dir():
            for entry in os.scandir(self.tars):
                if not entry.name.startswith("."):
                    names.add(entry.name.removesuffix(".part"))
        return names

    def write_checksum_file(self) -> Path:
        """Rebuild the xxh128 list from the records (derived data: any process may rebuild it)."""
        lines = [
            format_gnu_line(RECORD_ALGORITHM, rec.digests[RECORD_ALGORITHM], f"tars/{name}")
            for name, rec in sorted(self.records().items())
            if rec.status == "complete" and RECORD_ALGORITHM in rec.digests
        ]
        path = self.root / CHECKSUM_FILE
        atomic_write_text(path, "".join(f"{line}\n" for line in lines))
        return path

    def remember_manifest(self, text: str) -> None:
        atomic_write_text(self.root / "manifest.tsv", text, mode=0o600)

    def remembered_manifest(self) -> Path | None:
        path = self.root / "manifest.tsv"
        return path if path.is_file() else None
