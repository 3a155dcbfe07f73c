"""status agrees with verify: a finished tar whose record is lost or damaged is never 'missing'."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sa1b_cli.core.store import Store
from tests.shards import good_pair, install, tar_bytes
from tests.site import SA1B, Site, env

pytestmark = pytest.mark.slow


def damage(store: Store, name: str, how: str) -> None:
    path = store.record_path(name)
    if how == "garbage":
        path.write_text("{not json")
    elif how == "gone":
        path.unlink()
    else:  # a wrong size
        record = json.loads(path.read_text())
        record["size"] += 1
        path.write_text(json.dumps(record))


def test_tars_with_damaged_records_are_on_disk_not_missing(tmp_path: Path):
    store = Store(tmp_path / "root")
    hows = ["garbage", "gone", "size"]
    for k, how in enumerate(hows):
        name = f"sa_{k:06d}.tar"
        install(store, name, tar_bytes(good_pair(k + 1)))
        damage(store, name, how)
    done = subprocess.run(
        [SA1B, "status", "--root", str(store.root), "--json"],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
    )
    shards = {s["name"]: s for s in json.loads(done.stdout)["shards"]}
    assert sorted(shards) == [f"sa_{k:06d}.tar" for k in range(3)], done.stdout
    assert {s["status"] for s in shards.values()} == {"unrecorded"}, done.stdout
    assert all("run sa1b verify" in (s.get("detail") or "") for s in shards.values())
    text = subprocess.run(
        [SA1B, "status", "--root", str(store.root)], capture_output=True, text=True, env=env()
    )
    assert "missing" not in text.stdout + text.stderr


RECORDS = [  # a record on a shared root is anybody's file; each of these ended a run
    {"size": "12"},
    {"digests": [1, 2]},
    {"status": "partial", "size": None, "spans": [[1, 2, 3]]},
    {"status": "partial", "size": None, "expected_size": "x"},
    {"file_name": 5},
    {"status": "failed", "detail": "\x1b[2Jgone", "host": "\x1b]0;pwned\x07"},
]


@pytest.mark.parametrize("fields", RECORDS, ids=str)
def test_a_record_sa1b_would_not_write_ends_no_command(site: Site, fields: dict[str, object]):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    path = Store(site.root).record_path("sa_000000.tar")
    body = json.loads(path.read_text())
    for args in (("status",), ("status", "--json"), ("verify",), ("extract",), ("download",)):
        path.write_text(json.dumps(body | fields))
        done = site.run(*args, "--root", root, *(("--links", links) if "download" in args else ()))
        assert done.returncode in (0, 1), done.stderr
        assert "unexpected" not in done.stderr and "\x1b" not in done.stdout + done.stderr
    assert (site.root / "tars" / "sa_000000.tar").read_bytes() == site.source("sa_000000.tar")


def test_a_damaged_copy_of_the_manifest_hides_nothing_from_status(site: Site):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--shards", "0").returncode == 0
    (site.root / "manifest.tsv").write_bytes(b"\x00\xff not a manifest\n")
    code, report = site.run_json("status", "--root", root)
    assert code == 0  # it ended in "error: ... this is a binary file, not a link manifest"
    statuses = {s["name"]: s["status"] for s in report["shards"]}
    assert statuses == {"sa_000000.tar": "complete"}
