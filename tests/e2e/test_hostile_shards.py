"""Hostile shards through every command that reads them, checked from outside.

Each row is a crafted shard 0 beside a good shard 1 in the same run. Each cell checks: the
exit code, a line naming shard 0 and the cause, no traceback, the peak RSS of the sa1b
process under the stated bound, and shard 1 processed. A new kind of damage is one row.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from isal import igzip

from sa1b_cli.core.store import Store
from tests.shards import good_pair, install, tar_bytes
from tests.site import SA1B, env

pytestmark = pytest.mark.slow

BAD, GOOD = "sa_000000.tar", "sa_000001.tar"
RSS_BOUND_MB = 200  # README: every command that reads shards stays under this on any input


def bomb() -> bytes:
    """One member declaring 65 MiB of zeros: 65 KiB of gzip, past the member limit."""
    return tar_bytes([*good_pair(1), ("./sa_2.jpg", bytes(65 << 20)), *good_pair(3)[1:]])


def with_annotation(data: bytes) -> Callable[[], bytes]:
    """A shard whose sa_2.json is ``data`` (its JPEG good), between two good pairs."""
    return lambda: tar_bytes([*good_pair(1), good_pair(2)[0], ("./sa_2.json", data), *good_pair(3)])


def rle_edit(key: str, value: object) -> bytes:
    doc = json.loads(good_pair(2)[1][1])
    doc["annotations"][0]["segmentation"][key] = value
    return json.dumps(doc).encode()


def annotation_edit(key: str, value: object) -> bytes:
    """sa_2.json with its first annotation's ``key`` set (Python's json writes Infinity, NaN)."""
    doc = json.loads(good_pair(2)[1][1])
    doc["annotations"][0][key] = value
    return json.dumps(doc).encode()


def huge_rle() -> bytes:
    return rle_edit("size", [200000, 200000])


def short_member() -> bytes:
    """sa_3.jpg declares 1 MiB; the archive (and its gzip stream) ends 100 bytes into it."""
    raw = bytearray(tar_bytes(PAIRS[:4], gzip=False))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        end = max(m.offset_data + -(-m.size // 512) * 512 for m in tar.getmembers())
    info = tarfile.TarInfo("./sa_3.jpg")
    info.size = 1 << 20
    return igzip.compress(bytes(raw[:end]) + info.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 100)


PAIRS = [member for k in (1, 2, 3, 4) for member in good_pair(k)]


def corrupt_header() -> bytes:
    """sa_3.jpg's header checksum broken, in a gzip stream that is itself intact."""
    raw = bytearray(tar_bytes(PAIRS, gzip=False))
    at = raw.index(b"./sa_3.jpg")
    raw[at + 148 : at + 156] = b"0000000\0"
    return igzip.compress(bytes(raw))


def size_not_octal() -> bytes:
    """sa_3.jpg's size field reads 9999 (no octal number), its checksum made to add up."""
    raw = bytearray(tar_bytes(PAIRS, gzip=False))
    at = raw.index(b"./sa_3.jpg")
    raw[at + 124 : at + 136] = b"00000009999\0"
    raw[at + 148 : at + 156] = b" " * 8
    raw[at + 148 : at + 156] = b"%06o\0 " % sum(raw[at : at + 512])
    return igzip.compress(bytes(raw))


def unended(raw: bytes) -> bytes:
    """A tar's bytes without its end-of-archive blocks."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        last = tar.getmembers()[-1]
    return raw[: last.offset_data + -(-last.size // 512) * 512]


def no_end_blocks() -> bytes:
    return igzip.compress(unended(tar_bytes(PAIRS, gzip=False)))


def blocks(kind: bytes, body: bytes, name: str = "././@LongLink") -> bytes:
    """One raw member of any type: its header, then ``body`` padded to whole blocks."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(body)
    return info.tobuf(format=tarfile.GNU_FORMAT) + body + bytes(-len(body) % 512)


def pax(**fields: str) -> bytes:
    """pax records ("<length> <key>=<value>\n", the length counting itself)."""
    out = b""
    for key, value in fields.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + len(str(len(body)))
        length += len(str(length)) - len(str(len(body)))
        out += str(length).encode() + body
    return out


def after_pairs(raw: Callable[[], bytes]) -> Callable[[], bytes]:
    """The good pairs, then raw tar blocks, then the end-of-archive blocks: built when first
    used (some are hundreds of MiB before gzip), and only the gzip kept."""
    return functools.cache(
        lambda: igzip.compress(unended(tar_bytes(PAIRS, gzip=False)) + raw() + bytes(1024))
    )


def sparse_map() -> bytes:
    """A pax 1.0 sparse member whose map declares 99,999,999,999 numbers."""
    fields = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    body = b"99999999999\n" + b"1\n" * 4096
    return blocks(tarfile.XHDTYPE, pax(**fields), "p") + blocks(tarfile.REGTYPE, body, "./sa_9.jpg")


JUNK = blocks(tarfile.REGTYPE, b"j", "./sa_9.jpg")
HUGE = 160 << 20  # tarfile read an extended header whole: 160 MiB of it took over 300 MB


def global_headers() -> bytes:
    """A 60 KB global pax header of new keys before each of 2,000 members, 280 KB of gzip:
    tarfile kept them all and copied them for every member (46 s, 172 MB)."""
    keys = ({f"k{k}_{j}": "v" * 1000 for j in range(60)} for k in range(2000))
    return b"".join(
        blocks(tarfile.XGLTYPE, pax(**each), "g") + blocks(tarfile.REGTYPE, b"j", f"./j{k}.txt")
        for k, each in enumerate(keys)
    )


@functools.cache
def gzip_header(mib: int) -> bytes:
    """A gzip stream whose header carries a comment of ``mib`` MiB (isal holds 32 at most)."""
    raw = tar_bytes(PAIRS, gzip=False)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = b"\x1f\x8b\x08\x10\0\0\0\0\0\xff" + b"c" * (mib << 20) + b"\0"
    body = deflate.compress(raw) + deflate.flush()
    return head + body + struct.pack("<II", zlib.crc32(raw), len(raw))


def truncated() -> bytes:
    data = tar_bytes(PAIRS)
    return data[: len(data) - 40]


@functools.cache
def many_members() -> bytes:
    """400,000 one-byte members after the good pairs: 4 MB of gzip. Before the member limit,
    verify --deep took 290 MB (tarfile's stream mode keeps every header it read)."""
    return tar_bytes([*PAIRS, *((f"./junk_{k}.txt", b"j") for k in range(400_000))])


def waiting_annotations() -> bytes:
    """Twelve 20 MiB annotations (mostly spaces: 250 KB of gzip) whose JPEGs never come.
    verify --deep held each for its JPEG: 2.2 GB for forty of 50 MiB."""

    def doc(image_id: int) -> bytes:
        image = {"image_id": image_id, "width": 1500, "height": 1500}
        head = json.dumps({"image": image | {"file_name": f"sa_{image_id}.jpg"}})
        return head[:-1].encode() + b', "annotations": []' + b" " * (20 << 20) + b"}"

    return tar_bytes([*PAIRS, *((f"./sa_{k}.json", doc(k)) for k in range(100, 112))])


def unsafe(kind: str) -> Callable[[], bytes]:
    """Good pairs 1-3 and one member no SA-1B shard has: a link, a device or a path escape."""

    def build() -> bytes:
        if kind == "escape":
            return tar_bytes([*PAIRS[:6], ("../../evil.jpg", b"x")])
        info = tarfile.TarInfo("./sa_9.jpg")
        info.type = tarfile.SYMTYPE if kind == "link" else tarfile.CHRTYPE
        info.linkname = "/etc/passwd"
        return tar_bytes([*PAIRS[:6], info])

    return build


@dataclass(frozen=True)
class Row:
    name: str
    shard: Callable[[], bytes]
    says: str
    extract_ok: bool = False  # extract copies it (content is verify --deep's to judge)
    show_ok: bool | None = False  # None: sa_2 may lie before the damage (exit 0 or 1)
    draws: bool = True  # False: show fails to draw it where show --json passes
    member: str | None = "sa_2"  # the member (or its image) a line names; None: a byte offset
    ok_elsewhere: bool = False  # verify --deep passes it too (odd, not damaged)


ROWS = [
    Row("gzip bomb", bomb, "declares 65.0 MiB, over the 64.0 MiB a member may have"),
    Row("annotation not JSON", with_annotation(b"{not json"), "is not valid JSON (line 1)"),
    Row("annotation a list", with_annotation(b"[1, 2, 3]"), "is a JSON list"),
    Row(
        "annotation nested deeply",
        with_annotation(b"[" * 100_000 + b"]" * 100_000),
        "is nested too deeply",
    ),
    Row(
        "annotation of 5 million values",  # 3 bytes of '[],' each parse into a 64-byte list
        lambda: with_annotation(b'{"annotations": [' + b"[]," * 5_000_000 + b"[]]}")(),
        "holds more than 1,048,576 JSON values",
    ),
    Row("RLE size huge", lambda: with_annotation(huge_rle())(), "200000x200000", extract_ok=True),
    Row(
        "RLE counts a list",
        lambda: with_annotation(rle_edit("counts", [1, 2]))(),
        "RLE",
        extract_ok=True,
    ),
    Row(
        "RLE counts not ASCII",
        lambda: with_annotation(rle_edit("counts", "PPé\u202e"))(),
        "RLE",
        extract_ok=True,
    ),
    Row(
        "RLE size negative",
        lambda: with_annotation(rle_edit("size", [-64, 96]))(),
        "-64x96",
        extract_ok=True,
    ),
    Row(
        "an area of Infinity",  # Python's json reads it; JSON has no such thing
        with_annotation(annotation_edit("area", float("inf"))),
        "holds Infinity, which JSON does not allow",
        extract_ok=True,
    ),
    Row(
        "a bbox of NaN",
        with_annotation(annotation_edit("bbox", [float("nan"), 0, 1, 1])),
        "holds NaN, which JSON does not allow",
        extract_ok=True,
    ),
    Row(
        "an area of 1e999",  # a literal past a double: it parses as inf
        with_annotation(annotation_edit("area", 1234567).replace(b"1234567", b"1e999")),
        "area",
        extract_ok=True,
    ),
    Row(
        "a score and a box of 1e999",  # shown as null; verify checks neither
        with_annotation(annotation_edit("bbox", [1234567, 0, 1, 1]).replace(b"1234567", b"1e999")),
        "",
        extract_ok=True,
        show_ok=True,
        ok_elsewhere=True,
    ),
    Row(
        "a member declaring more than it has",
        short_member,
        "ends inside this member",
        show_ok=True,
        member="sa_3.jpg",
    ),
    Row(
        "8,000 tiny members",
        lambda: tar_bytes([*PAIRS, *((f"./junk_{k}.txt", b"j") for k in range(8000))]),
        "",
        extract_ok=True,
        show_ok=True,
        ok_elsewhere=True,
        member=None,
    ),
    Row(
        "400,000 tiny members",
        many_members,
        "more than 100,000 members",
        show_ok=True,  # sa_2 comes before the limit
        member=None,
    ),
    Row(
        "a GNU long name of 160 MiB",
        after_pairs(lambda: blocks(tarfile.GNUTYPE_LONGNAME, bytes(HUGE)) + JUNK),
        "an extended header declares 160.0 MiB",
        show_ok=True,
        member=None,
    ),
    Row(
        "a GNU long name of 60 MiB",  # under the member limit: salvage held it (242 MB)
        after_pairs(lambda: blocks(tarfile.GNUTYPE_LONGNAME, b"a" * (60 << 20)) + JUNK),
        "an extended header declares 60.0 MiB",
        show_ok=True,
        member=None,
    ),
    Row(
        "a pax header of 160 MiB",
        after_pairs(lambda: blocks(tarfile.XHDTYPE, pax(comment="x" * HUGE), "p") + JUNK),
        "an extended header declares 160.0 MiB",
        show_ok=True,
        member=None,
    ),
    Row(
        "3,000 long names in a row",  # each reads the next: Python ran out of stack
        after_pairs(lambda: blocks(tarfile.GNUTYPE_LONGNAME, b"n" * 200) * 3000 + JUNK),
        "more than 8 extended headers in a row",
        show_ok=True,
        member=None,
    ),
    Row(
        "global pax headers that grow",
        after_pairs(global_headers),
        "the global pax headers grow past 64 KiB",
        show_ok=True,
        member=None,
    ),
    Row(
        "a sparse member (pax 1.0)",  # its map is read to the length it declares
        after_pairs(sparse_map),
        "a sparse member",
        show_ok=True,
        member=None,
    ),
    Row(
        "a sparse member (old GNU)",
        after_pairs(lambda: blocks(tarfile.GNUTYPE_SPARSE, b"s" * 512, "./sa_9.jpg")),
        "a sparse member",
        show_ok=True,
        member=None,
    ),
    Row(
        "annotations whose JPEGs never come",
        waiting_annotations,
        "sa_100.json has no sa_100.jpg",
        extract_ok=True,
        show_ok=True,
        member=None,
    ),
    Row(
        "members named like sa1b's own files",
        lambda: tar_bytes([*PAIRS, ("./.done/sa_000000.json", b"{}"), ("./index.csv", b"x")]),
        "",
        extract_ok=True,
        show_ok=True,
        ok_elsewhere=True,
        member=None,
    ),
    Row(
        "not a JPEG",
        lambda: tar_bytes([*good_pair(1), ("./sa_2.jpg", b"not a jpeg"), good_pair(2)[1]]),
        "JPEG",  # verify: its header is unreadable (show --json does not decode it)
        extract_ok=True,
        show_ok=True,
        draws=False,
    ),
    Row(
        "a duplicated member",
        lambda: tar_bytes([*PAIRS, ("./sa_3.jpg", b"another copy")]),
        "sa_3.jpg appears twice in the archive",
        show_ok=True,
        member="sa_3.jpg",
    ),
    Row(
        "escapes in a member name",
        lambda: tar_bytes([*PAIRS, ("./sa_5\x1b[2J.jpg", b"x"), ("./x\nerror: forged.jpg", b"y")]),
        "unsafe member",
        show_ok=True,
        member="sa_5\\x1b[2J.jpg",
    ),
    Row("a link member", unsafe("link"), "unsafe member", show_ok=True, member="sa_9.jpg"),
    Row("a device member", unsafe("device"), "unsafe member", show_ok=True, member="sa_9.jpg"),
    Row("a path escape", unsafe("escape"), "unsafe member", show_ok=True, member="evil.jpg"),
    Row(
        "damaged header mid-archive",
        corrupt_header,
        "damaged tar header at byte",
        show_ok=True,
        member=None,
    ),
    Row(
        "a header whose size is not octal",
        size_not_octal,
        "damaged tar header at byte",
        show_ok=True,
        member=None,
    ),
    Row(
        "no end-of-archive blocks",
        no_end_blocks,
        "without its end-of-archive",
        show_ok=True,
        member=None,
    ),
    Row(
        "a gzip header of 33 MiB",  # isal raised OverflowError, which ended the run
        lambda: gzip_header(33),
        "the gzip stream is corrupt",
        member=None,
    ),
    Row(
        "a gzip header of 1 MiB",  # a long header within isal's bound reads as any other
        lambda: gzip_header(1),
        "",
        extract_ok=True,
        show_ok=True,
        ok_elsewhere=True,
        member=None,
    ),
    Row(
        "gzip stream cut short",
        truncated,
        "the gzip stream is cut short",
        show_ok=None,
        member=None,
    ),
    Row(
        "garbage after the gzip stream",
        lambda: tar_bytes(PAIRS) + b"junk" * 64,
        "bytes that are not gzip follow the gzip stream",
        show_ok=None,  # the reader inflates ahead: it may meet the garbage before sa_2
        member=None,
    ),
]


def strict(token: str) -> None:
    raise ValueError(token)


def run_measured(args: list[str]) -> tuple[int, str, float]:
    """Run the installed sa1b in a fresh helper: exit code, output, its peak RSS in MB."""
    probe = (
        "import json,resource,subprocess,sys;"
        "r=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "print(json.dumps([r.returncode,r.stdout+r.stderr,"
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, SA1B, *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
        check=True,
    )
    code, out, rss = json.loads(done.stdout)
    return code, out, rss


LAYOUTS = ("shard", "split", "images-masks", "flat", "webdataset")


def command_args(command: str, root: Path) -> list[str]:
    """The arguments of one cell's command, reading ``root``."""
    where = ["--root", str(root)]
    if command.startswith("extract"):
        layout = command.rpartition(" ")[2]
        out = str(root.parent / f"out-{layout}")
        return ["extract", *where, "--shards", "0,1", "--layout", layout, "--out", out]
    if command.startswith("verify"):
        return ["verify", *where, "--shards", "0,1", *command.split()[1:]]
    show = ["show", "2", *where, "--shard", "0"]
    return [*show, "--json"] if command == "show" else [*show, "-o", str(root.parent / "2.png")]


COMMANDS = [
    *(f"extract --layout {layout}" for layout in LAYOUTS),
    "verify --deep",
    "verify --deep --decode-masks",
    "show",
    "show --draw",
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_a_hostile_shard_fails_itself_within_bounded_memory(row, command, tmp_path):
    root = tmp_path / "root"
    store = Store(root)
    install(store, BAD, row.shard())
    install(store, GOOD, tar_bytes([*good_pair(11187), *good_pair(11188)]))
    code, out, rss = run_measured(command_args(command, root))
    nothing_outside(tmp_path)
    assert rss < RSS_BOUND_MB, f"{command}: peak RSS {rss:.0f} MB"
    ok = (
        row.extract_ok
        if command.startswith("extract")
        else row.show_ok and (row.draws or command == "show")
        if command.startswith("show")
        else row.ok_elsewhere
    )
    if ok is not False:  # that command may read what it needs from before the damage
        assert code in ((0, 1) if ok is None else (0,)), out
        if command == "show" and code == 0:
            json.loads(out, parse_constant=strict)  # JSON has no Infinity, as Python writes
        assert "Traceback" not in out and "unexpected error" not in out, out
        assert "\x1b" not in out and "\nerror: forged" not in out, out  # nothing foreign raw
        return
    assert code == 1, out
    assert "Traceback" not in out and "unexpected error" not in out, out
    assert "\x1b" not in out and "\nerror: forged" not in out, out  # nothing foreign raw
    named = [line for line in out.splitlines() if row.says in line]
    assert any(BAD in line for line in named) or (command.startswith("show") and named), out
    assert row.member is None or row.member in out, out  # the member (or its image) is named
    if command.startswith("extract"):  # the good shard beside it was extracted all the same
        out_dir = root.parent / f"out-{command.rpartition(' ')[2]}"
        names = {p.name for p in out_dir.rglob("*")}
        assert "sa_11187.jpg" in names or GOOD in names, sorted(names)[:20]
    elif command.startswith("verify"):
        assert any(GOOD in line and " ok" in line for line in out.splitlines()), out


def nothing_outside(tmp_path: Path) -> None:
    """Only the root and the --out folders were written (a path escape lands nowhere else)."""
    made = {p.name for p in tmp_path.iterdir()}
    assert made <= {"root", "2.png", *(f"out-{layout}" for layout in LAYOUTS)}, made
    assert not list(tmp_path.parent.glob("evil.jpg")) and not Path("/tmp/evil.jpg").exists()


def test_show_says_a_jpeg_it_cannot_draw_is_not_readable(tmp_path):
    root = tmp_path / "root"
    install(Store(root), BAD, tar_bytes([("./sa_2.jpg", b"not a jpeg"), good_pair(2)[1]]))
    png = tmp_path / "x.png"
    code, out, _ = run_measured(["show", "2", "--root", str(root), "--shard", "0", "-o", str(png)])
    assert code == 1 and "sa_2.jpg in sa_000000.tar is not a readable JPEG" in out, out
    assert "BytesIO" not in out and "permissions" not in out and not png.exists(), out


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_show_reads_extracted_output_of_a_hostile_shard_as_safely(row, tmp_path):
    root, out_dir = tmp_path / "root", tmp_path / "out-shard"
    install(Store(root), BAD, row.shard())
    install(Store(root), GOOD, tar_bytes([*good_pair(11187), *good_pair(11188)]))
    extract = ["extract", "--root", str(root), "--shards", "0,1", "--out", str(out_dir)]
    subprocess.run([SA1B, *extract], capture_output=True, env=env(), timeout=120, check=False)
    show = ["show", "2", "--root", str(root), "--out", str(out_dir), "--json"]
    code, out, rss = run_measured(show)
    assert rss < RSS_BOUND_MB, f"peak RSS {rss:.0f} MB"
    assert "Traceback" not in out and "unexpected error" not in out and "\x1b" not in out, out
    if row.extract_ok and row.show_ok is True:
        assert code == 0, out
    elif row.extract_ok:  # extracted as served: show checks what it reads
        assert code == 1 and row.says in out, out
    else:  # a shard that failed extraction left nothing show could take for whole
        assert code == 1 and "is not in any extracted shard" in out, out


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_salvage_reads_a_hostile_shard_as_safely(row, tmp_path):
    root = tmp_path / "root"
    install(Store(root), BAD, row.shard())
    install(Store(root), GOOD, tar_bytes([*good_pair(11187), *good_pair(11188)]))
    out_dir = root.parent / "out-shard"
    extract = ["extract", "--root", str(root), "--shards", "0,1", "--out", str(out_dir)]
    code, out, rss = run_measured([*extract, "--salvage"])
    nothing_outside(tmp_path)
    assert rss < RSS_BOUND_MB, f"peak RSS {rss:.0f} MB"
    assert code in (0, 1), out
    assert "Traceback" not in out and "unexpected error" not in out, out
    assert "\x1b" not in out and "\nerror: forged" not in out, out  # nothing foreign raw
    assert (out_dir / "sa_000001" / "sa_11187.jpg").is_file(), out  # the good shard beside it
    assert not list(out_dir.rglob("evil*")), out


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_salvage_meets_every_hostile_shard_without_failing_the_run(row, tmp_path):
    """``extract --salvage`` reads past damage by its own tar scanner: whatever it makes of
    shard 0 (extracted, salvaged or failed), the run goes on, and shard 1 is extracted."""
    root, out = tmp_path / "root", tmp_path / "out-shard"
    store = Store(root)
    install(store, BAD, row.shard())
    install(store, GOOD, tar_bytes([*good_pair(11187), *good_pair(11188)]))
    args = ["extract", "--root", str(root), "--shards", "0,1", "--out", str(out), "--salvage"]
    code, out_text, rss = run_measured(args)
    nothing_outside(tmp_path)
    assert rss < RSS_BOUND_MB, f"peak RSS {rss:.0f} MB"
    assert code in (0, 1), out_text
    assert "Traceback" not in out_text and "unexpected error" not in out_text, out_text
    assert "\x1b" not in out_text and "\nerror: forged" not in out_text, out_text
    assert any(BAD in line for line in out_text.splitlines()), out_text
    assert {"sa_11187.jpg", "sa_11188.jpg"} <= {p.name for p in out.rglob("*.jpg")}
