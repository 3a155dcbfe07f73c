"""The plan, with no network: what is settled, what a record vouches for, what is checked."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from sa1b_cli.core.checksums import ChecksumList
from sa1b_cli.core.errors import NotEnoughSpaceError
from sa1b_cli.core.manifest import object_path, read_manifest
from sa1b_cli.core.selection import Selection
from sa1b_cli.core.store import Record, Store
from sa1b_cli.download.config import DownloadConfig
from sa1b_cli.download.plan import (
    Expected,
    SpanSet,
    check_space,
    interrupted,
    kept_spans,
    plan,
    same_object,
)
from tests.fakecdn import url_for

NAMES = ["sa_000000.tar", "sa_000001.tar", "sa_000002.tar"]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[DownloadConfig, Store]:
    links = tmp_path / "links.txt"
    rows = "\n".join(f"{n}\t{url_for(n)}" for n in NAMES)
    links.write_text("file_name\tcdn_link\n" + rows)
    config = DownloadConfig(
        root=tmp_path / "root", links=links, selection=Selection((*NAMES, "sa_000009.tar"))
    )
    return config, Store(config.root).ensure()


def test_the_plan_settles_complete_and_unknown_shards_and_keeps_the_rest(setup):
    config, store = setup
    store.final_path(NAMES[0]).write_bytes(b"x" * 10)
    store.write(Record(NAMES[0], "complete", size=10, expected_size=10))
    store.final_path(NAMES[1]).write_bytes(b"x" * 9)  # complete once, cut short since
    store.write(Record(NAMES[1], "complete", size=10, expected_size=10))
    planned = plan(read_manifest(config.links), config, store)
    assert planned.names == [*NAMES, "sa_000009.tar"]
    assert {r.name: r.status for r in planned.settled} == {
        NAMES[0]: "present",
        "sa_000009.tar": "no_link",
    }
    assert [row.file_name for row in planned.pending] == NAMES[1:]


def test_a_record_vouches_for_its_spans_or_for_the_prefix_older_records_name():
    assert kept_spans(None) == SpanSet()
    assert list(kept_spans(Record("a", "partial", durable_bytes=100))) == [(0, 100)]
    spans = Record("a", "partial", durable_bytes=5, spans=[[0, 5], [10, 20]])
    assert list(kept_spans(spans)) == [(0, 5), (10, 20)]


def test_a_record_of_another_object_vouches_for_nothing(setup):
    config, store = setup
    row = read_manifest(config.links).rows[NAMES[2]]
    store.write(Record(NAMES[2], "partial", durable_bytes=7, object_path="/other/object.tar"))
    assert same_object(store, row) is None
    assert interrupted(store, row, 0).detail == "not started; run the same command to fetch it"
    store.write(Record(NAMES[2], "partial", durable_bytes=7, object_path=object_path(row.url)))
    assert same_object(store, row) is not None
    assert interrupted(store, row, 9).bytes_done == 7


def test_the_community_md5_wins_over_a_lists():
    lists = ChecksumList({"sa_000000.tar": {"md5": "a" * 32, "sha256": "b"}})
    expected, sources = Expected(lists, {"sa_000000.tar": "c" * 32}).of("sa_000000.tar")
    assert expected == {"md5": "c" * 32, "sha256": "b"}
    assert sources == {"md5": "community", "sha256": "list"}


def test_space_counts_only_bytes_not_kept(setup, monkeypatch):
    _, store = setup
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 0, 1000))
    records = {NAMES[0]: Record(NAMES[0], "partial", spans=[[0, 600]]), NAMES[1]: None}
    assert check_space(store, records, {NAMES[0]: 1000, NAMES[1]: 500}) == 900
    with pytest.raises(NotEnoughSpaceError, match="need"):
        check_space(store, records, {NAMES[0]: 1000, NAMES[1]: 700})


def test_a_shard_no_disk_here_holds_is_left_to_fail_alone(setup, monkeypatch):
    """A server that says 909 TiB fails its shard (``NoRoom``), not the run; but when no
    shard fits alone, or the rest do not fit together, the disk is what is short."""
    _, store = setup
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 0, 1000))
    records = dict.fromkeys(NAMES[:3])
    assert check_space(store, records, {NAMES[0]: 10**15, NAMES[1]: 500}) == 500
    assert check_space(store, records, {NAMES[0]: 10**15}) == 0  # (others of unknown size)
    with pytest.raises(NotEnoughSpaceError, match="need"):
        check_space(store, records, {NAMES[0]: 10**15, NAMES[1]: 600, NAMES[2]: 600})
    with pytest.raises(NotEnoughSpaceError, match="need"):
        check_space(store, records, dict.fromkeys(NAMES[:3], 5000))
