"""Records on the root: atomic, damage means unknown, and derived files rebuilt from them."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import xxhash

from sa1b_cli.core import store as store_module
from sa1b_cli.core.store import Record, Store, atomic_write_text


def test_a_record_round_trips_and_names_its_host(tmp_path: Path):
    store = Store(tmp_path).ensure()
    record = Record("sa_000001.tar", "partial", expected_size=10, spans=[[0, 4], [6, 8]])
    store.write(record)
    back = store.read("sa_000001.tar")
    assert back is not None and back.spans == [[0, 4], [6, 8]] and back.host
    assert back.kept_bytes() == 6
    assert not list(store.state.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("damage", [b"", b"{", b"[]", b'{"file_name": 1}', b'{"unknown": 2}'])
def test_a_damaged_record_reads_as_unknown(tmp_path: Path, damage: bytes):
    store = Store(tmp_path).ensure()
    store.record_path("sa_000002.tar").write_bytes(damage)
    assert store.read("sa_000002.tar") is None
    assert store.records() == {}


def test_a_record_past_its_bound_is_not_read(tmp_path: Path, monkeypatch):
    """A record is read at most MAX_RECORD bytes (a shared root's file could be any size)."""
    store = Store(tmp_path).ensure()
    store.write(Record("sa_000003.tar", "partial", expected_size=10, spans=[[0, 4]]))
    size = store.record_path("sa_000003.tar").stat().st_size
    monkeypatch.setattr(store_module, "MAX_RECORD", size - 1)
    assert store.read("sa_000003.tar") is None
    monkeypatch.setattr(store_module, "MAX_RECORD", size)
    assert store.read("sa_000003.tar") is not None


def test_complete_means_whole_on_disk_or_deleted_on_purpose():
    done = Record("a", "complete", size=10)
    assert done.is_done(10) and not done.is_done(9) and not done.is_done(None)
    assert done.with_(tar_deleted=True).is_done(None)
    assert not Record("a", "partial", size=10).is_done(10)


def test_known_names_come_from_records_tars_and_parts(tmp_path: Path):
    store = Store(tmp_path).ensure()
    store.write(Record("sa_000001.tar", "partial"))
    (store.tars / "sa_000002.tar").write_bytes(b"x")
    (store.tars / "sa_000003.tar.part").write_bytes(b"x")
    (store.tars / ".hidden").write_bytes(b"x")
    assert store.known_names() == {"sa_000001.tar", "sa_000002.tar", "sa_000003.tar"}


def test_the_checksum_file_lists_complete_shards_for_xxhsum(tmp_path: Path):
    store = Store(tmp_path).ensure()
    data = b"shard bytes"
    (store.tars / "sa_000001.tar").write_bytes(data)
    digest = xxhash.xxh3_128(data).hexdigest()
    store.write(Record("sa_000001.tar", "complete", size=len(data), digests={"xxh128": digest}))
    store.write(Record("sa_000002.tar", "partial"))
    path = store.write_checksum_file()
    assert path.read_text() == f"{digest}  tars/sa_000001.tar\n"
    xxhsum = subprocess.run(["which", "xxhsum"], capture_output=True, check=False)
    if xxhsum.returncode == 0:
        done = subprocess.run(["xxhsum", "-c", path.name], cwd=tmp_path, check=False)
        assert done.returncode == 0


def test_atomic_writes_keep_the_old_file_until_the_new_one_is_whole(tmp_path: Path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new", mode=0o600)
    assert target.read_text() == "new" and os.stat(target).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_the_remembered_manifest_is_private(tmp_path: Path):
    store = Store(tmp_path).ensure()
    store.remember_manifest("sa_000000.tar\thttps://cdn/x?oh=SECRET\n")
    path = store.remembered_manifest()
    assert path is not None and os.stat(path).st_mode & 0o777 == 0o600


def test_an_atomic_write_names_the_file_asked_for_and_writes_every_byte(tmp_path, monkeypatch):
    """A failure names the target, never the temporary beside it; a short write goes on."""
    with pytest.raises(FileNotFoundError) as failed:
        atomic_write_text(tmp_path / "no" / "such" / "list.md5", "x")
    assert failed.value.filename == str(tmp_path / "no" / "such" / "list.md5")

    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:3])))  # 3 at a time
    atomic_write_text(tmp_path / "index.csv", "0123456789")
    assert (tmp_path / "index.csv").read_text() == "0123456789"


def test_a_streamed_file_lands_whole_or_not_at_all(tmp_path, monkeypatch):
    from sa1b_cli.core.errors import DiskFullError
    from sa1b_cli.core.store import atomic_text_file

    target = tmp_path / "index.csv"
    with atomic_text_file(target, sync=False) as handle:
        handle.write("a\n")
        assert not target.exists()  # nothing at the name until the end
    assert target.read_text() == "a\n"

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    full_disk = pytest.raises(DiskFullError, match=r"the disk is full while writing index\.csv")
    with full_disk, atomic_text_file(target) as handle:
        handle.write("b\n")
    assert target.read_text() == "a\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "index.csv"
    ]


def _streamed(target: Path, text: str) -> None:
    from sa1b_cli.core.store import atomic_text_file

    with atomic_text_file(target) as handle:
        handle.write(text)


@pytest.mark.parametrize("write", [atomic_write_text, _streamed], ids=["whole", "streamed"])
def test_a_folder_at_the_target_is_named_never_our_temporary(tmp_path: Path, write: Any):
    target = tmp_path / "file_list.txt"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as failed:
        write(target, "a\n")
    assert failed.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file_list.txt"]


HOSTILE_FIELDS = [  # each ended a run in "unexpected error" through some command
    {"status": "zzz"},
    {"status": [1]},
    {"size": "12"},
    {"size": -1},
    {"size": True},
    {"digests": [1, 2]},
    {"digests": {"xxh128": 5}},
    {"spans": "abc"},
    {"spans": [[500, 100]]},
    {"spans": [[1, 2, 3]]},
    {"spans": [[-100, 50]]},
    {"spans": [[0, 10**30]]},
    {"spans": [[0.5, 100.5]]},
    {"expected_size": "x"},
    {"durable_bytes": "x"},
    {"updated": "x"},
    {"checked": {"a": 1}},
    {"tar_deleted": "yes"},
    {"file_name": 5},
    {"file_name": "sa_000002.tar"},  # another shard's record under this one's name
    {"object_path": 5},
]


@pytest.mark.parametrize("fields", HOSTILE_FIELDS, ids=str)
def test_a_record_sa1b_would_not_write_reads_as_unknown(tmp_path: Path, fields: dict[str, Any]):
    store = Store(tmp_path).ensure()
    good = Record("sa_000001.tar", "partial", expected_size=1000, spans=[[0, 400]])
    store.write(good)
    assert store.read("sa_000001.tar") is not None
    body = json.loads(store.record_path("sa_000001.tar").read_text())
    store.record_path("sa_000001.tar").write_text(json.dumps(body | fields))
    assert store.read("sa_000001.tar") is None
    assert store.records() == {}


def test_the_words_of_a_record_are_escaped_when_read(tmp_path: Path):
    """`status` shows a record's detail and host: never a terminal's escape, raw."""
    store = Store(tmp_path).ensure()
    store.write(Record("sa_000001.tar", "failed", detail="\x1b[2Jgone\nerror: forged"))
    body = json.loads(store.record_path("sa_000001.tar").read_text())
    store.record_path("sa_000001.tar").write_text(json.dumps(body | {"host": "\x1b]0;x\x07"}))
    back = store.read("sa_000001.tar")
    assert back is not None
    assert back.detail == "\\x1b[2Jgone\\nerror: forged" and back.host == "\\x1b]0;x\\x07"


@pytest.mark.parametrize("planted", ["tars", "state", "claims"])
def test_a_file_where_the_root_keeps_a_folder_is_named(tmp_path: Path, planted: str):
    from sa1b_cli.core.errors import RootError

    (tmp_path / planted).write_text("x")
    with pytest.raises(RootError) as refused:
        Store(tmp_path).ensure()
    said = f"cannot create {tmp_path / planted}: it is there, not a folder"
    assert refused.value.message == said
