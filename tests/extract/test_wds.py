"""The WebDataset writer: members in, one sorted uncompressed tar and its marker out."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from sa1b_cli.core.archive import Member
from sa1b_cli.core.markers import read_marker
from sa1b_cli.extract.wds import TarRepacker, write_wids_index
from tests.shards import good_pair

NAME = "sa_000003.tar"


def repack(out: Path, ids: list[int], kinds: frozenset[str] = frozenset({"jpg", "json"})) -> int:
    out.mkdir(exist_ok=True)
    with TarRepacker(out, NAME, kinds, durable=False) as repacker:
        for image_id in ids:
            for name, data in good_pair(image_id):
                assert repacker.add(Member(name.removeprefix("./"), data))
        assert not repacker.add(Member("notes.txt", b"not a sample"))
        return repacker.commit(layout="webdataset", only=None)


def test_samples_come_sorted_whole_and_side_by_side(tmp_path: Path):
    out = tmp_path / "wds"
    assert repack(out, [10, 2, 1]) == 3
    with tarfile.open(out / NAME) as tar:
        names = tar.getnames()
        assert (
            names == sorted(names) == [f"sa_{i}.{k}" for i in (1, 10, 2) for k in ("jpg", "json")]
        )
        for name, data in good_pair(10):
            handle = tar.extractfile(name.removeprefix("./"))
            assert handle is not None and handle.read() == data
    marker = read_marker(out, NAME)
    assert marker is not None and marker["nsamples"] == 3
    assert marker["filesize"] == (out / NAME).stat().st_size
    assert [p.name for p in out.iterdir() if p.name.startswith(".tmp")] == []


def test_only_the_kinds_asked_for_are_kept_and_every_image_is_indexed(tmp_path: Path):
    out = tmp_path / "wds"
    assert repack(out, [1, 2], frozenset({"jpg"})) == 2
    with tarfile.open(out / NAME) as tar:
        assert tar.getnames() == ["sa_1.jpg", "sa_2.jpg"]
    assert (out / "index" / "sa_000003.csv").read_text().count("\n") == 3  # header + 2 rows


def test_the_wids_index_lists_marked_webdataset_shards_only(tmp_path: Path):
    out = tmp_path / "wds"
    repack(out, [1])
    index = write_wids_index(out, [NAME, "sa_000004.tar"])  # the second was never marked
    assert index is not None
    doc = json.loads(index.read_text())
    assert doc["__kind__"] == "wids-shard-index-v1"
    assert doc["shardlist"] == [
        {"url": NAME, "nsamples": 1, "filesize": (out / NAME).stat().st_size}
    ]
    assert write_wids_index(tmp_path / "empty", ["sa_000004.tar"]) is None


def test_short_writes_still_give_a_whole_tar(tmp_path: Path, monkeypatch):
    """A write may take fewer bytes than given (a disk filling up): every header, padding
    and the end-of-archive marker must still land whole."""
    import os

    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:100])))
    out = tmp_path / "wds"
    assert repack(out, [2, 1]) == 2
    with tarfile.open(out / NAME) as tar:
        assert tar.getnames() == ["sa_1.jpg", "sa_1.json", "sa_2.jpg", "sa_2.json"]
        for name, data in good_pair(2):
            handle = tar.extractfile(name.removeprefix("./"))
            assert handle is not None and handle.read() == data
    data = (out / NAME).read_bytes()
    assert len(data) % 512 == 0 and data[-1024:] == bytes(1024)  # the end marker, whole
