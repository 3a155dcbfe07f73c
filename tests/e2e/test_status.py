"""status agrees with verify: a finished tar whose record is lost or damaged is never 'missing'."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sa1b_cli.core.store import Store
from tests.shards import good_pair, install, tar_bytes
from tests.site import SA1B, env

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
