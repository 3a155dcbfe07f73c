"""Read a shard as served (gzip stream or plain tar, by magic bytes) in one streaming pass.

Members come out with safe, normalised names or as refusals: nothing absolute, no
``..``, no links, devices or other special files ever reach a caller as a file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from isal import igzip_threaded

from sa1b_cli.core.checksums import Hasher
from sa1b_cli.core.text import format_size, shown

__all__ = [
    "MAX_EXTENDED",
    "MAX_MEMBER",
    "MAX_MEMBERS",
    "ArchiveError",
    "HashingReader",
    "Member",
    "Refusal",
    "iter_members",
    "member_id",
    "open_shard",
    "open_tar",
]

GZIP_MAGIC = b"\x1f\x8b"
READ_BLOCK = 4 << 20
# tarfile's stream mode copies what is left of its buffer on every read, so a large
# buffer makes each 512-byte header read cost megabytes; the reader below reads 4 MiB.
TAR_BUFSIZE = 256 << 10
# Members are read whole, so their size is bounded before a byte is read. No SA-1B member
# is known to come near this (images are a few MiB at most, annotations less): a member
# past it (a gzip bomb, a forged header) fails its shard instead of filling memory.
MAX_MEMBER = 64 << 20
# An SA-1B shard has about 22,400 members (11,186 pairs). Each costs memory however small
# (its name is kept to find a second copy): 500,000 one-byte members fit in a 5 MB gzip.
MAX_MEMBERS = 100_000
# tarfile reads the extended headers before a member (a GNU long name, a pax record) whole,
# at whatever size they declare: 500 MiB from a 2 MB gzip. Real ones hold a name and a few
# fields; each may lead to another, so their number in a row is bounded too.
MAX_EXTENDED = 64 << 10
MAX_EXTENDED_IN_A_ROW = 8
_SPARSE = "a sparse member, which no SA-1B shard has"
_EXTENDED = frozenset(
    {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE}
    | {tarfile.SOLARIS_XHDTYPE}
)
_SA_RE = re.compile(r"sa_([1-9]\d*)\.(jpg|json)", re.ASCII)


class ArchiveError(Exception):
    """The stream cannot be decoded or parsed to its end (data, not a run error)."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str  # normalised: no leading "./"
    data: bytes


@dataclass(frozen=True, slots=True)
class Refusal:
    name: str
    reason: str


class HashingReader(io.RawIOBase):
    """A raw reader that hashes and counts every byte it hands out."""

    def __init__(self, raw: BinaryIO, hashers: Iterable[Hasher]) -> None:
        self.raw = raw
        self.hashers = list(hashers)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            view = memoryview(buffer)[:n]
            for hasher in self.hashers:
                hasher.update(view)
            self.count += n
        return int(n or 0)


@contextlib.contextmanager
def open_shard(
    path: Path, hashers: Iterable[Hasher] = ()
) -> Iterator[tuple[BinaryIO, HashingReader]]:
    """The decoded tar stream of a shard, and the reader counting the bytes as served."""
    with path.open("rb", buffering=0) as raw:
        magic = raw.read(2)
        raw.seek(0)
        reader = HashingReader(raw, hashers)
        buffered = io.BufferedReader(reader, buffer_size=READ_BLOCK)
        if magic == GZIP_MAGIC:
            # A second thread inflates (isal, ~2.5x zlib) while this one parses the tar.
            stream = igzip_threaded.open(  # type: ignore[no-untyped-call]
                buffered, "rb", threads=1, block_size=READ_BLOCK
            )
            with stream:
                yield stream, reader
        else:
            yield buffered, reader


class _BoundedInfo(tarfile.TarInfo):
    """tarfile's header reader, with bounds on what it reads whole (its documented hook).

    A header refused here is a ReadError, as tarfile says of any damaged header.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.ReadError(_SPARSE)
        if self.type not in _EXTENDED:
            plain: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
            return plain
        if self.size > MAX_EXTENDED:
            msg = f"an extended header declares {format_size(self.size)}; real ones hold a name"
            raise tarfile.ReadError(msg)
        depth = getattr(tarfile_, "_sa1b_depth", 0)
        if depth >= MAX_EXTENDED_IN_A_ROW:
            msg = f"more than {MAX_EXTENDED_IN_A_ROW} extended headers in a row"
            raise tarfile.ReadError(msg)
        tarfile_._sa1b_depth = depth + 1  # type: ignore[attr-defined]
        try:
            info: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        finally:
            tarfile_._sa1b_depth = depth  # type: ignore[attr-defined]
        if sum(len(k) + len(v) for k, v in tarfile_.pax_headers.items()) > MAX_EXTENDED:
            msg = "the global pax headers grow past 64 KiB"
            raise tarfile.ReadError(msg)
        return info

    def _proc_gnusparse_10(self, *args: object) -> None:
        # Its map is read to whatever length it declares; the other sparse forms are bounded
        # by MAX_EXTENDED but are refused alike: no SA-1B shard has a sparse member.
        raise tarfile.ReadError(_SPARSE)

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10


def open_tar(fileobj: BinaryIO, mode: Literal["r|", "r:"]) -> tarfile.TarFile:
    """tarfile.open with bounded headers: ``r|`` (a stream) or ``r:`` (random access)."""
    return tarfile.open(fileobj=fileobj, mode=mode, bufsize=TAR_BUFSIZE, tarinfo=_BoundedInfo)


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a member must not be written, or None when it is a safe regular file."""
    name = info.name
    if info.issym() or info.islnk():
        return f"a link (to {info.linkname!r})"
    if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
        return "a device or special file"
    if not info.isfile():
        return f"not a regular file (type {info.type!r})"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "an absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "a path with '..'"
    if any(ord(c) < 32 for c in name):
        return "a name with control characters"
    return None


def _normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _is_root_dir(info: tarfile.TarInfo) -> bool:
    return info.isdir() and _normalise(info.name.rstrip("/") + "/") in ("", ".", "./")


def iter_members(stream: BinaryIO) -> Iterator[Member | Refusal]:
    """Every member in archive order; raises ArchiveError when the stream is damaged.

    A name that comes twice fails the shard, in every layout and check alike: no SA-1B
    shard has one, and which copy is right cannot be known.
    """
    seen: set[str] = set()
    try:
        with open_tar(stream, "r|") as tar:
            for info in tar:
                tar.members = []  # type: ignore[attr-defined]  # stream mode keeps each header read
                if _is_root_dir(info):
                    continue
                if len(seen) >= MAX_MEMBERS:
                    msg = f"it has more than {MAX_MEMBERS:,} members, and a shard about 22,400"
                    raise ArchiveError(msg)
                name = _normalise(info.name)
                if name in seen:
                    msg = f"{shown(name)} appears twice in the archive"
                    raise ArchiveError(msg)
                seen.add(name)
                problem = member_problem(info)
                if problem is not None:
                    yield Refusal(info.name, problem)
                    continue
                if info.size > MAX_MEMBER:
                    msg = (
                        f"{shown(info.name)} declares {format_size(info.size)}, over the "
                        f"{format_size(MAX_MEMBER)} a member may have"
                    )
                    raise ArchiveError(msg)
                yield Member(name, _read_whole(tar, info, name))
            _check_end(tar)
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, OverflowError) as exc:
        raise ArchiveError(_in_words(exc)) from exc  # OverflowError: isal, a 32 MiB gzip header


def _in_words(exc: BaseException) -> str:
    """What a decoder's error means for a shard, without Python's names."""
    if isinstance(exc, EOFError):
        return "the gzip stream is cut short (an incomplete download?)"
    if isinstance(exc, gzip.BadGzipFile):
        return f"bytes that are not gzip follow the gzip stream ({exc})"
    said = str(exc)
    if (
        isinstance(exc, zlib.error | ValueError | OverflowError)
        or "CRC" in said
        or "inflate" in said
    ):
        return f"the gzip stream is corrupt ({exc})"
    if isinstance(exc, tarfile.TarError):
        return f"the tar stream is damaged ({exc})"
    return f"the shard cannot be read ({exc})"


def _read_whole(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str) -> bytes:
    handle = tar.extractfile(info)
    try:
        data = handle.read() if handle is not None else b""
    except (tarfile.ReadError, EOFError) as exc:  # the stream ended inside it
        data = b""
        error: BaseException | None = exc
    else:
        error = None
    if len(data) != info.size:
        msg = f"{shown(name)}: the archive ends inside this member"
        raise ArchiveError(msg) from error
    return data


def _check_end(tar: tarfile.TarFile) -> None:
    """The archive really ended: its end-of-archive blocks, then zeros to the end of the stream.

    tarfile in stream mode takes a damaged header after the first member, or no header at
    all, for the end of the archive. Reading what follows to the end also makes the gzip
    layer check its trailer (CRC and length) and refuse garbage after it.
    """
    stream = tar.fileobj
    assert stream is not None
    if stream.tell() < tar.offset + tarfile.BLOCKSIZE:
        msg = f"the archive ends at byte {tar.offset:,} without its end-of-archive blocks"
        raise ArchiveError(msg)
    while block := stream.read(1 << 20):
        if block.strip(b"\0"):
            msg = f"a damaged tar header at byte {tar.offset:,}: the archive goes on past it"
            raise ArchiveError(msg)


def member_id(name: str) -> tuple[int, str] | None:
    """``sa_123.jpg`` -> (123, "jpg"); None for any other name."""
    match = _SA_RE.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else None
