"""``extract --salvage``: every member that can be proven intact, out of a damaged shard.

The gzip stream is inflated as far as it goes. Where it breaks, the next deflate block is
searched for from there, at every bit of every byte: a raw inflater is primed with a
stand-in for the 32 KiB window the damage took, and a place counts once what it inflates
holds a valid tar header and runs past the break. Bytes that may depend on the lost
window are found by inflating twice, with two different stand-ins: where the two differ,
the bytes are unknown, and a member holding any is lost. Once 32 KiB in a row agree,
nothing later can depend on the lost window. Past a break, tar headers are found by their
magic and checksum at any offset. A member is handed on only once the header after it is
valid: damage that puts an inflater out of step turns what follows into garbage.
"""

from __future__ import annotations

import os
import zlib
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sa1b_cli.core.archive import GZIP_MAGIC, MAX_EXTENDED, MAX_MEMBER, MAX_MEMBERS, member_id

__all__ = ["UNLOCATED", "Break", "Found", "Proof", "scan_damaged"]

CHUNK = 16 << 10  # compressed bytes inflated at a time (at most ~16 MiB out)
SEARCH_SPAN = 4 << 20  # compressed bytes searched for the next block, at the most
SEARCH_OUTPUT = 512 << 20  # bytes the candidates of one search may inflate, in all
WINDOW = 32 << 10
_PRIMES = (bytes(WINDOW), b"\xa5" * WINDOW)  # two stand-ins for a lost window
UNLOCATED = "the gzip checksum fails, and no damage put the stream out of step"
_PROBE = 64  # bytes a candidate place must inflate without an error, cheaply, first
_BLOCK = 512
_EXTENDED = (b"L", b"K", b"x", b"g", b"X")  # type flags of headers for the member after
_TRAILER = 8  # gzip's CRC-32 and length
_READ_AHEAD = 256 << 10


@dataclass(frozen=True, slots=True)
class Found:
    """A whole member as the archive declares it; ``exact`` when no byte of it is unknown."""

    name: str
    data: bytes
    exact: bool


@dataclass(frozen=True, slots=True)
class Break:
    """Where inflating stopped, and where (if anywhere) it went on."""

    at: int  # compressed offset
    resumed: int | None  # compressed offset of the next block found, None: nothing after
    why: str


@dataclass(slots=True)
class _Piece:
    data: bytes
    unknown: list[tuple[int, int]] = field(default_factory=list)  # ranges within data


class _Source:
    """The damaged file, read where asked (not mapped: its pages would count as ours)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.size = fd, os.fstat(fd).st_size
        self.at, self.block = 0, b""  # the last block read: the search reads bytes by tens

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, span: slice) -> bytes:
        start, stop = span.start or 0, min(span.stop, self.size)
        if stop - start > _READ_AHEAD // 2:
            return os.pread(self.fd, max(0, stop - start), start)
        if not (self.at <= start and stop <= self.at + len(self.block)):
            self.at, self.block = start, os.pread(self.fd, _READ_AHEAD, start)
        return self.block[start - self.at : stop - self.at]


def _shifted(source: _Source, pos: int, bit: int, size: int) -> bytes:
    """``size`` bytes of the bit stream starting at bit ``bit`` of byte ``pos``."""
    raw = source[pos : pos + size + (1 if bit else 0)]
    if not bit:
        return raw
    value = int.from_bytes(raw, "little") >> bit
    return value.to_bytes(len(raw), "little")[: min(size, len(raw))]


class _Inflater:
    """One pass of inflating from a byte and bit; with stand-in windows, it runs twice."""

    def __init__(self, source: _Source, pos: int, bit: int = 0, *, primed: bool) -> None:
        self.source, self.pos, self.bit = source, pos, bit
        if primed:
            self.runs = [zlib.decompressobj(-15, zdict=prime) for prime in _PRIMES]
        else:
            self.runs = [zlib.decompressobj(31)]  # the gzip header and all
        self.agreed = 0  # output bytes in a row on which the two runs agree

    @property
    def ended(self) -> bool:
        return self.runs[0].eof

    def step(self) -> _Piece | None:
        """The next output (raises zlib.error on damage); None at the stream's or file's end."""
        if self.ended or self.pos >= len(self.source):
            return None
        size = CHUNK
        if self.bit == 0 and self.pos < len(self.source) - _TRAILER < self.pos + CHUNK:
            size = len(self.source) - _TRAILER - self.pos  # the trailer alone: a bad CRC
        chunk = _shifted(self.source, self.pos, self.bit, size)  # loses no output with it
        self.pos += len(chunk)
        outs = [run.decompress(chunk) for run in self.runs]
        piece = _Piece(outs[0])
        if len(outs) == 2:
            piece.unknown = self._compare(outs[0], outs[1])
        return piece

    def _compare(self, one: bytes, other: bytes) -> list[tuple[int, int]]:
        if one == other:
            self.agreed += len(one)
            if self.agreed >= WINDOW:  # nothing later can reach the lost window
                del self.runs[1]
            return []
        unknown = []
        for start in range(0, len(one), _BLOCK):
            if one[start : start + _BLOCK] != other[start : start + _BLOCK]:
                unknown.append((start, min(start + _BLOCK, len(one))))
        self.agreed = len(one) - unknown[-1][1]
        return unknown


def _valid_header(block: bytes | bytearray) -> bool:
    if len(block) < _BLOCK or block[257:262] != b"ustar":
        return False
    try:
        stored = int(bytes(block[148:156]).split(b"\0", 1)[0].strip() or b"-", 8)
        _size(block)  # a size that is not octal makes no header either, checksum or not
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:_BLOCK])


def _size(block: bytes | bytearray) -> int:
    field = bytes(block[124:136])
    if field[0] & 0x80:  # base-256
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


@dataclass(frozen=True, slots=True)
class _Desync:
    """A header where one should be is not valid: the stream went wrong before ``at``."""

    at: int  # output offset of the bad header


class _TarScan:
    """Members out of inflated bytes; after a break, headers are searched for anywhere.

    A member is handed on only once the header after it (or the end of the archive) is
    valid: damage that puts the inflater out of step turns what follows into garbage,
    and the member it started in must not pass for whole.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.base = 0  # output offset of buf[0]
        self.unknown: deque[tuple[int, int]] = deque()  # output ranges not known exactly
        self.searching = False
        self.skip = 0  # padding still to drop after a member
        self.long_name: str | None = None
        self.ended = False
        self.pending: Found | None = None  # waits for the next header to be valid
        self.last_good = 0  # output offset of the last valid header

    def feed(self, piece: _Piece) -> Iterator[Found | _Desync]:
        end = self.base + len(self.buf)
        self.unknown.extend((end + a, end + b) for a, b in piece.unknown)
        self.buf += piece.data
        while not self.ended:
            if self.skip:
                dropped = min(self.skip, len(self.buf))
                self._drop(dropped)
                self.skip -= dropped
                if self.skip:
                    return
            if self.searching and not self._search():
                return
            if len(self.buf) < _BLOCK:
                return
            found = self._member()
            if found is None:
                return
            if not isinstance(found, bool):
                yield found

    def finish(self) -> Iterator[Found]:
        """The input ended without damage (or was cut short): the member waiting is whole."""
        if self.pending is not None:
            yield self.pending
        self.pending = None

    def broke(self) -> None:
        """The stream broke: a member under way is lost; look for the next header anywhere."""
        self.base += len(self.buf)
        self.buf.clear()
        self.skip, self.searching, self.long_name, self.pending = 0, True, None, None

    def _search(self) -> bool:
        at = self.buf.find(b"ustar", 257)
        while at >= 0:
            if _valid_header(self.buf[at - 257 : at - 257 + _BLOCK]):
                self._drop(at - 257)
                self.searching = False
                return True
            at = self.buf.find(b"ustar", at + 1)
        self._drop(max(0, len(self.buf) - _BLOCK))  # a header may straddle what comes next
        return False

    def _member(self) -> Found | _Desync | bool | None:
        """A member, a desync, True for a header with nothing to hand on, None to wait."""
        header = bytes(self.buf[:_BLOCK])
        if not header.strip(b"\0"):
            self.ended = True  # the end-of-archive blocks: the member before them is whole
            released, self.pending = self.pending, None
            return released if released is not None else True
        if not _valid_header(header):
            self.pending = None  # the member before it ran into the damage
            desync = _Desync(self.base)
            self._drop(_BLOCK)
            self.searching = True
            return desync
        size, kind = _size(header), header[156:157]
        if size > (MAX_EXTENDED if kind in _EXTENDED else MAX_MEMBER):  # too big to hold
            released, self.pending, self.last_good = self.pending, None, self.base
            self._drop(_BLOCK)
            self.skip = size + -size % _BLOCK  # passed over, never held
            return released if released is not None else True
        if len(self.buf) < _BLOCK + size:
            return None
        released = self.pending
        self.pending, self.last_good = None, self.base
        data = bytes(self.buf[_BLOCK : _BLOCK + size])
        exact = not self._touches_unknown(self.base, self.base + _BLOCK + size)
        name, self.long_name = self.long_name or _name(header), None
        self._drop(_BLOCK + size)
        self.skip = -size % _BLOCK
        if kind == b"L":  # GNU long name: the next member's name
            self.long_name = data.rstrip(b"\0").decode("utf-8", "replace")
        elif kind in (b"0", b"\0", b"7"):  # never directories, links, devices, pax records
            self.pending = Found(name.removeprefix("./"), data, exact)
        return released if released is not None else True

    def _touches_unknown(self, start: int, end: int) -> bool:
        while self.unknown and self.unknown[0][1] <= start:
            self.unknown.popleft()
        return any(a < end and start < b for a, b in self.unknown)

    def _drop(self, count: int) -> None:
        del self.buf[:count]
        self.base += count


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    return f"{prefix}/{name}" if prefix and header[257:263] == b"ustar\0" else name


class _Budget:
    """Output one search may inflate in all: a stream of garbage (a bomb) cannot hold it up."""

    def __init__(self, left: int) -> None:
        self.left = left


def _inflates_past(source: _Source, pos: int, bit: int, past: int, budget: _Budget) -> bool:
    """A block starts here: it inflates past ``past``, and a valid tar header follows that."""
    head = _shifted(source, pos, bit, _PROBE)
    kind = (head[0] >> 1) & 3 if head else 3
    if kind == 3 or (kind == 0 and not _stored_header(head)):
        return False  # no such block type / a stored block's length and its complement
    try:  # cheap first: most places fail within a few bytes (no window needed to see it)
        zlib.decompressobj(-15).decompress(head)
    except zlib.error as exc:
        if "too far back" not in str(exc):  # a distance into the lost window is fine
            return False
    inflater, scan, produced = _Inflater(source, pos, bit, primed=True), _TarScan(), 0
    scan.searching = True
    try:
        while (piece := inflater.step()) is not None and produced < 2 * MAX_MEMBER:
            produced += len(piece.data)
            budget.left -= len(piece.data)
            if budget.left < 0:
                return False
            if inflater.pos <= past:
                continue  # where the damage was seen, not beyond it
            for _ in scan.feed(piece):
                pass
            if not scan.searching:
                return True
    except zlib.error:
        return False
    return False


def _stored_header(head: bytes) -> bool:
    """A stored block: after its 3 header bits, byte-aligned, LEN and its complement."""
    return len(head) >= 5 and head[1] | head[2] << 8 == (head[3] | head[4] << 8) ^ 0xFFFF


def _next_block(source: _Source, start: int, past: int) -> tuple[int, int] | None:
    budget = _Budget(SEARCH_OUTPUT)
    for pos in range(max(0, start), min(len(source), start + SEARCH_SPAN)):
        for bit in range(8):
            if _inflates_past(source, pos, bit, past, budget):
                return pos, bit
            if budget.left < 0:
                return None
    return None


def scan_damaged(path: Path) -> Iterator[Found | Break]:
    """Every whole member of a (gzip'ed) shard in order, and a Break where the stream broke;
    at most ``MAX_MEMBERS`` members (each costs memory, however small)."""
    with path.open("rb") as handle:
        src = _Source(handle.fileno())
        scanner = _Salvage(src) if src[:2] == GZIP_MAGIC else _Plain(src)
        found = 0
        for item in scanner.run():
            found += isinstance(item, Found)
            if found > MAX_MEMBERS:
                yield Break(scanner.pos, None, f"more than {MAX_MEMBERS:,} members, not a shard")
                return
            yield item


class _Plain:
    """A plain tar: only its headers can be damaged, and the scan finds the next one."""

    def __init__(self, source: _Source) -> None:
        self.source, self.pos = source, 0

    def run(self) -> Iterator[Found | Break]:
        scan = _TarScan()
        for pos in range(0, len(self.source), CHUNK):
            self.pos = pos
            for item in scan.feed(_Piece(self.source[pos : pos + CHUNK])):
                if isinstance(item, Found):
                    yield item
                else:
                    yield Break(item.at, item.at, "a damaged tar header")
        yield from scan.finish()
        if not scan.ended:
            yield Break(len(self.source), None, "the file ends before the archive does")


class _Salvage:
    """Inflate, hand members on, and at each break find where the stream goes on."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.inflater = _Inflater(source, 0, primed=False)
        self.scan = _TarScan()
        self.marks: deque[tuple[int, int]] = deque()  # (output end, input end) per piece
        self.out = 0
        self.resumed = -1
        self.handed: set[str] = set()

    @property
    def pos(self) -> int:
        """The compressed offset reached."""
        return self.inflater.pos

    def run(self) -> Iterator[Found | Break]:
        while True:
            try:
                piece = self.inflater.step()
            except zlib.error as exc:
                if "check" in str(exc):  # the trailer: every byte was in step, some changed
                    yield from self.scan.finish()
                    yield Break(self.inflater.pos, None, UNLOCATED)
                    return
                if not (yield from self._resync(f"inflating failed ({exc})")):
                    return
                continue
            if piece is None:
                if self._next_member():
                    continue
                yield from self._end()
                return
            self.out += len(piece.data)
            self.marks.append((self.out, self.inflater.pos))
            while len(self.marks) > 2 and self.marks[1][0] <= self.scan.last_good:
                self.marks.popleft()  # nothing before the last good header is asked for
            desync = yield from self._feed(piece)
            # A damaged header, or a stream out of step: which, cannot be told from here, and
            # an inflater back in step by chance may copy from garbage. Start again, primed.
            if desync and not (yield from self._resync("a tar header is damaged")):
                return

    def _next_member(self) -> bool:
        """After one gzip member ends, the next one (a file of several) goes on."""
        if not self.inflater.ended:
            return False
        # Past a primed (raw) inflater the member's 8-byte trailer comes first.
        end = self.inflater.pos - len(self.inflater.runs[0].unused_data)
        near = self.source[end - 1 : end + 2 * _TRAILER + 3]
        at = near.find(GZIP_MAGIC + b"\x08")
        if at < 0:
            return False
        self.inflater = _Inflater(self.source, end - 1 + at, primed=False)
        return True

    def _end(self) -> Iterator[Found | Break]:
        yield from self._new(self.scan.finish())
        if not self.inflater.ended and not self.scan.ended:
            yield Break(len(self.source), None, "the file ends before the archive does")

    def _feed(self, piece: _Piece) -> Generator[Found | Break, None, bool]:
        for item in self.scan.feed(piece):
            if isinstance(item, _Desync):
                return True
            yield from self._new([item])
        return False

    def _new(self, found: Iterable[Found]) -> Iterator[Found]:
        """Members not handed on before (a restart may inflate some of them again)."""
        for item in found:
            if item.name not in self.handed:
                self.handed.add(item.name)
                yield item

    def _resync(self, why: str) -> Generator[Break, None, bool]:
        """Find the next block past the damage; False when there is none."""
        failed = self.inflater.pos
        start = max(self._input_at(self.scan.last_good) - CHUNK, self.resumed + 1)
        found = _next_block(self.source, start, failed)
        yield Break(failed, found[0] if found else None, why)
        if found is None:
            return False
        self.resumed = found[0]
        self.scan.broke()
        self.inflater = _Inflater(self.source, found[0], found[1], primed=True)
        return True

    def _input_at(self, out: int) -> int:
        """The input offset inflating had reached just before producing output ``out``."""
        before = 0
        for end, pos in self.marks:
            if end > out:
                break
            before = pos
        return before


class Proof:
    """Which members of a damaged shard are proven whole, by what they hold.

    A JPEG counts when it decodes to its end; an annotation when it parses, its fields
    and masks pass the content checks, and its image size is the JPEG's. A pair is kept
    only when both halves count (one half alone with ``--only``).
    """

    def __init__(self, kinds: frozenset[str]) -> None:
        self.kinds = kinds  # what the output keeps: {"jpg", "json"} or one of them
        self.sizes: dict[tuple[int, str], tuple[int, int]] = {}  # (id, kind) -> (w, h)
        self.seen: set[int] = set()

    def whole(self, found: Found) -> bool:
        """Whether a member is proven whole and is of a kind the output keeps."""
        parsed = member_id(found.name)
        if parsed is None:
            return False
        image_id, kind = parsed
        self.seen.add(image_id)
        if not found.exact or kind not in self.kinds:
            return False
        data = found.data
        size = _jpeg_whole(data) if kind == "jpg" else _annotation_whole(image_id, data)
        if size is not None:
            self.sizes[image_id, kind] = size
        return size is not None

    def kept(self) -> set[int]:
        ids = {image_id for image_id, _ in self.sizes}
        if self.kinds == {"jpg", "json"}:
            both = (i for i in ids if (i, "jpg") in self.sizes and (i, "json") in self.sizes)
            return {i for i in both if self.sizes[i, "jpg"] == self.sizes[i, "json"]}
        (kind,) = self.kinds
        return {i for i in ids if (i, kind) in self.sizes}


def _jpeg_whole(data: bytes) -> tuple[int, int] | None:
    import io

    from PIL import Image

    if not data.endswith(b"\xff\xd9"):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                return None
            size = image.size
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))  # DCT scaled
            image.load()  # every entropy-coded byte is read; a cut-short one raises
            return size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _annotation_whole(image_id: int, data: bytes) -> tuple[int, int] | None:
    from sa1b_cli.core.content import AnnotationInput, check_annotation

    check = check_annotation(AnnotationInput(image_id, data))  # fields, RLEs, areas
    other_size = check.warnings["mask size differs from the image size"]  # must fit the image
    return None if check.errors or other_size else check.size
