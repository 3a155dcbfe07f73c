"""extract --salvage: every member proven whole out of a damaged shard, and nothing else.

The expected sets come from how each shard was built: the members' places in the
uncompressed tar, and how many of its bytes inflate from the compressed bytes before
the damage.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from sa1b_cli.core.layouts import Layout, Only
from sa1b_cli.core.markers import read_marker
from sa1b_cli.core.selection import Selection
from sa1b_cli.core.store import Record, Store
from sa1b_cli.devtools.synth import ShardSpec, make_shard
from sa1b_cli.extract.config import ExtractConfig
from sa1b_cli.extract.salvage import UNLOCATED, Break, Found, scan_damaged
from sa1b_cli.extract.shard import extract_one
from tests.shards import install

NAME = "sa_000000.tar"
# Members larger than deflate's 32 KiB window, as in SA-1B (a JPEG of a few hundred KiB)
SPEC = ShardSpec(0, images=24, width=400, height=300, masks=60, pad_bytes=50_000)


@cache
def built(tmp: str) -> tuple[bytes, list[tuple[str, int, int]], dict[str, bytes]]:
    """The shard's bytes, (name, start, end) of each member in the tar, and their bytes."""
    data = make_shard(Path(tmp) / "good.tar", SPEC).read_bytes()
    raw = zlib.decompress(data, 31)
    places, members = [], {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for info in tar:
            if info.isfile():
                name = info.name.removeprefix("./")
                places.append((name, info.offset, info.offset_data + info.size))
                handle = tar.extractfile(info)
                assert handle is not None
                members[name] = handle.read()
    return data, places, members


@pytest.fixture
def shard(tmp_path_factory: pytest.TempPathFactory):
    return built(str(tmp_path_factory.getbasetemp()))


def inflated_before(data: bytes, cut: int) -> int:
    """Bytes of the tar that inflate from the compressed bytes before ``cut``."""
    return len(zlib.decompressobj(31).decompress(data[:cut]))


def ids(names: set[str]) -> set[int]:
    return {int(n[3:].split(".")[0]) for n in names}


def whole_pairs(places: list[tuple[str, int, int]], lo: int, hi: int) -> set[int]:
    """Images both of whose members lie wholly within [lo, hi) of the tar."""
    inside = {n for n, start, end in places if lo <= start and end <= hi}
    return {i for i in ids(inside) if {f"sa_{i}.jpg", f"sa_{i}.json"} <= inside}


def salvage(tmp_path: Path, data: bytes) -> tuple[dict[str, Any], Path]:
    store = Store(tmp_path / "root")
    install(store, NAME, data, record=False)
    store.write(Record(NAME, "bad", size=len(data), detail="verify: digest mismatch"))
    out = tmp_path / "out"
    config = ExtractConfig(store.root, Selection((NAME,)), out=out, jobs=1, salvage=True)
    result = extract_one(config, NAME)
    assert result.status == "salvaged" and not result.ok
    marker = read_marker(out, NAME)
    assert marker is not None
    return marker["salvaged"], out


def written(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "sa_000000").iterdir()}


def check_bytes(out: Path, members: dict[str, bytes], expected: set[int]) -> None:
    files = written(out)
    assert ids(set(files)) == expected
    assert all(files[name] == members[name] for name in files)  # byte for byte
    index = (out / "index" / "sa_000000.csv").read_text().splitlines()[1:]
    assert {int(row.split(",")[0]) for row in index} == expected  # rows for the kept only


def test_a_truncated_shard_gives_every_pair_before_the_cut(tmp_path: Path, shard):
    data, places, members = shard
    cut = int(len(data) * 0.6)
    salvaged, out = salvage(tmp_path, data[:cut])
    expected = whole_pairs(places, 0, inflated_before(data, cut))
    assert 0 < len(expected) < 24
    check_bytes(out, members, expected)
    assert salvaged["images"] == len(expected)


def test_corrupt_deflate_data_loses_the_damaged_stretch_and_resyncs_after_it(tmp_path: Path, shard):
    data, places, members = shard
    json_places = [(n, s, e) for n, s, e in places if n.endswith(".json")]
    name, start, end = json_places[len(json_places) // 2]  # Huffman-coded: goes out of step
    lo, hi = 0, len(data)
    while hi - lo > 1:  # the compressed offset whose bytes inflate to the middle of it
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if inflated_before(data, mid) < (start + end) // 2 else (lo, mid)
    bad = bytearray(data)
    bad[lo : lo + 32] = bytes(b ^ 0x5A for b in bad[lo : lo + 32])
    salvaged, out = salvage(tmp_path, bytes(bad))
    files = written(out)
    assert all(files[n] == members[n] for n in files)  # nothing wrong was written
    got = ids(set(files))
    damaged = int(name[3:].split(".")[0])
    assert damaged not in got and damaged in salvaged["lost"]
    # Every pair before the damage is kept: both halves, and the header after each, inflate
    # from bytes before it (a member is handed on once the header after it is valid).
    cut = inflated_before(data, lo)
    starts = [s for _, s, _ in places] + [1 << 40]
    vouched = {n for k, (n, _, e) in enumerate(places) if e <= cut and starts[k + 1] + 512 <= cut}
    before = {i for i in ids(vouched) if {f"sa_{i}.jpg", f"sa_{i}.json"} <= vouched}
    after = whole_pairs(places, end + 600_000, 1 << 40)  # past the next block and header
    assert before and before <= got and after <= got and after
    assert any(b[1] is not None for b in salvaged["breaks"])  # it went on past the damage


def test_a_damaged_tar_header_loses_its_member_and_the_one_before(tmp_path: Path, shard):
    data, places, members = shard
    raw = bytearray(zlib.decompress(data, 31))
    k = len(places) // 2
    name, start, _ = places[k]
    raw[start + 148 : start + 156] = b"99999999"  # its checksum no longer adds up
    salvaged, out = salvage(tmp_path, zlib.compress(bytes(raw), 6, wbits=31))
    files = written(out)
    assert all(files[n] == members[n] for n in files)
    # The member before a bad header may have run into damage that put the stream out of
    # step (the two cannot be told apart where it is seen): it is not proven, so lost too.
    lost = ids({name, places[k - 1][0]})
    assert ids(set(files)) == ids(set(members)) - lost
    assert set(salvaged["lost"]) == lost


def test_a_header_whose_size_is_not_octal_is_damage_too(tmp_path: Path, shard):
    """Its checksum adds up (a crafted shard), its size reads 9999: that ended the whole
    ``extract --salvage`` run with a ValueError."""
    data, places, members = shard
    raw = bytearray(zlib.decompress(data, 31))
    k = len(places) // 2
    name, start, _ = places[k]
    raw[start + 124 : start + 136] = b"00000009999\0"
    raw[start + 148 : start + 156] = b" " * 8
    raw[start + 148 : start + 156] = b"%06o\0 " % sum(raw[start : start + 512])
    salvaged, out = salvage(tmp_path, zlib.compress(bytes(raw), 6, wbits=31))
    files = written(out)
    assert all(files[n] == members[n] for n in files)
    lost = ids({name, places[k - 1][0]})
    assert ids(set(files)) == ids(set(members)) - lost
    assert set(salvaged["lost"]) == lost


def test_garbage_after_the_stream_costs_nothing(tmp_path: Path, shard):
    data, _, members = shard
    salvaged, out = salvage(tmp_path, data + b"\x00garbage" * 1000)
    check_bytes(out, members, ids(set(members)))
    assert salvaged["lost"] == [] and salvaged["images"] == 24


def test_a_change_that_keeps_the_stream_in_step_is_reported_as_not_located(tmp_path: Path, shard):
    data = bytearray(shard[0])
    at = int(len(data) * 0.3)  # inside a JPEG's padding, stored as is: no decoder can tell
    data[at : at + 40] = bytes(b ^ 0x5A for b in data[at : at + 40])
    items = list(scan_damaged(_write(tmp_path, bytes(data))))
    assert isinstance(items[-1], Break) and items[-1].why == UNLOCATED
    assert all(isinstance(i, Found) for i in items[:-1])


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "shard.tar"
    path.write_bytes(data)
    return path


def test_a_shard_of_several_gzip_members_is_read_to_its_end(tmp_path: Path, shard):
    data, places, members = shard
    raw = zlib.decompress(data, 31)
    half = places[len(places) // 2][1]  # a member's header: the second gzip member starts there
    two = zlib.compress(raw[:half], 6, wbits=31) + zlib.compress(raw[half:], 6, wbits=31)
    items = list(scan_damaged(_write(tmp_path, two)))
    assert not [i for i in items if isinstance(i, Break)]
    assert {i.name: i.data for i in items if isinstance(i, Found)} == members


def test_the_proof_of_each_half_and_of_a_pair():
    from sa1b_cli.extract.salvage import Proof
    from tests.shards import edit_json, good_pair

    (jpg_name, jpg), (json_name, doc) = [(n.removeprefix("./"), d) for n, d in good_pair(7)]
    proof = Proof(frozenset({"jpg", "json"}))
    assert proof.whole(Found(jpg_name, jpg, exact=True))
    assert not proof.whole(Found(json_name, doc, exact=False))  # bytes not known exactly
    assert proof.kept() == set() and proof.seen == {7}
    assert proof.whole(Found(json_name, doc, exact=True))
    assert proof.kept() == {7}
    cut, other = Proof(frozenset({"jpg", "json"})), Proof(frozenset({"jpg", "json"}))
    assert not cut.whole(Found(jpg_name, jpg[:-100], exact=True))  # does not decode to its end

    def other_size(d):  # type: ignore[no-untyped-def]
        d["annotations"][0]["segmentation"]["size"] = [5, 5]

    assert not other.whole(Found(json_name, edit_json(doc, other_size), exact=True))
    images = Proof(frozenset({"jpg"}))
    assert images.whole(Found(jpg_name, jpg, exact=True))
    assert not images.whole(Found(json_name, doc, exact=True))  # not kept with --only images
    assert images.kept() == {7}


@pytest.mark.parametrize(("layout", "only"), [("webdataset", None), ("flat", "images")])
def test_salvage_into_other_layouts(tmp_path: Path, shard, layout: str, only: str | None):
    data, places, members = shard
    cut = int(len(data) * 0.6)
    store = Store(tmp_path / "root")
    install(store, NAME, data[:cut], record=False)
    store.write(Record(NAME, "bad", size=cut))
    out = tmp_path / "out"
    kept = None if only is None else Only(only)
    config = ExtractConfig(
        store.root, Selection((NAME,)), out=out, layout=Layout(layout), only=kept, salvage=True
    )
    result = extract_one(config, NAME)
    assert result.status == "salvaged" and result.salvaged is not None
    inflated = inflated_before(data, cut)
    if layout == "webdataset":
        expected = whole_pairs(places, 0, inflated)
        with tarfile.open(out / NAME) as tar:
            names = tar.getnames()
            assert ids(set(names)) == expected and len(names) == 2 * len(expected)
            assert all(tar.extractfile(n).read() == members[n] for n in names)  # type: ignore[union-attr]
    else:  # --only images: an image counts alone
        jpgs = {n for n, _, e in places if n.endswith(".jpg") and e <= inflated}
        assert {p.name for p in out.glob("*.jpg")} == jpgs and not list(out.glob("*.json"))


def test_a_part_file_that_can_never_be_finished_is_salvaged_too(tmp_path: Path, shard):
    data, places, members = shard
    cut = int(len(data) * 0.4)
    store = Store(tmp_path / "root").ensure()
    store.part_path(NAME).write_bytes(data[:cut])  # the link expired, the CDN is gone
    store.write(Record(NAME, "expired", expected_size=len(data), spans=[[0, cut]]))
    out = tmp_path / "out"
    config = ExtractConfig(store.root, Selection((NAME,)), out=out, salvage=True)
    plain = extract_one(dataclasses.replace(config, salvage=False), NAME)
    assert plain.status == "partial" and not out.exists()
    result = extract_one(config, NAME)
    assert result.status == "salvaged"
    check_bytes(out, members, whole_pairs(places, 0, inflated_before(data, cut)))


def test_a_search_through_a_bomb_gives_up_and_keeps_what_came_before(tmp_path: Path):
    """A damaged header, then 1 GiB of zeros in ~1 MiB: every place in it inflates for long,
    so one search has a budget of output (without it, 256 MiB of zeros took 77 s, not 4)."""
    from tests.shards import good_pair

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in good_pair(1) + good_pair(2):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        end = tar.offset
    forged = tarfile.TarInfo("sa_3.jpg")
    forged.size = 1 << 30
    header = bytearray(forged.tobuf(format=tarfile.GNU_FORMAT))
    header[148:156] = b"99999999"  # its checksum no longer adds up
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    parts = [packer.compress(raw.getvalue()[:end] + bytes(header))]
    zeros = bytes(1 << 20)
    parts += [packer.compress(zeros) for _ in range(1024)]
    parts.append(packer.flush())
    items = list(scan_damaged(_write(tmp_path, b"".join(parts))))
    found = {i.name for i in items if isinstance(i, Found)}
    breaks = [i for i in items if isinstance(i, Break)]
    assert found == {"sa_1.jpg", "sa_1.json", "sa_2.jpg"}  # sa_2.json ran into the damage
    assert [b.resumed for b in breaks] == [None]
