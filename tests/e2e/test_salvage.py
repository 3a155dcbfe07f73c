"""extract --salvage from outside: never silent, exactly the salvaged ids listed, replaced
by a whole copy."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import pytest

from sa1b_cli.core.store import Record, Store
from sa1b_cli.devtools.synth import ShardSpec, make_shard
from tests.shards import install
from tests.site import Site

pytestmark = pytest.mark.slow
NAME = "sa_000000.tar"


def test_salvage_is_opt_in_listed_exactly_and_replaced_by_a_whole_copy(site: Site, tmp_path: Path):
    spec = ShardSpec(0, images=12, width=400, height=300, masks=60, pad_bytes=50_000)
    good = make_shard(tmp_path / "good.tar", spec).read_bytes()
    cut = good[: int(len(good) * 0.55)]  # truncated: what inflates before the cut survives
    store = Store(site.root)
    install(store, NAME, cut, record=False)
    store.write(Record(NAME, "bad", size=len(cut), detail="verify: size mismatch"))
    root, out = str(site.root), site.root / "out"
    args = ("extract", "--root", root, "--out", str(out), "--shards", "0")
    code, report = site.run_json(*args)
    assert code == 1 and report["shards"][0]["status"] == "failed_verification"
    assert not (out / "sa_000000").exists()  # never silent: nothing without --salvage
    done = site.run(*args, "--salvage")
    assert done.returncode == 1 and "salvaged" in done.stderr and "lost" in done.stderr
    code, report = site.run_json(*args, "--salvage")  # asked again: said again, not redone
    (shard,) = report["shards"]
    assert code == 1 and shard["status"] == "salvaged"
    kept = {int(p.stem[3:]) for p in (out / "sa_000000").glob("*.jpg")}
    assert shard["salvaged"]["images"] == len(kept) > 0 and shard["salvaged"]["lost"]
    assert set(shard["salvaged"]["lost"]).isdisjoint(kept)
    assert {int(i) for i in (out / "sa_images_ids.txt").read_text().split()} == kept
    assert len((out / "file_list.txt").read_text().split()) == len(kept)
    raw = zlib.decompress(good, 31)
    assert all(p.read_bytes() in raw for p in (out / "sa_000000").iterdir())
    shutil.copytree(out, site.root / "extracted")  # the default --out, which status reads
    code, status = site.run_json("status", "--root", root, "--shards", "0")
    (state,) = status["shards"]
    assert state["status"] == "failed_verification" and state["salvaged"]["images"] == len(kept)
    assert "salvaged:" in site.run("status", "--root", root, "--shards", "0").stdout
    install(store, NAME, good)  # a whole, checked copy arrives
    code, report = site.run_json(*args)
    assert code == 0 and report["shards"][0]["status"] == "extracted"
    assert len((out / "sa_images_ids.txt").read_text().split()) == 12


def test_a_crafted_header_fails_its_shard_never_the_salvage_run(site: Site, tmp_path: Path):
    """A member header whose checksum adds up and whose size reads 9999 (not octal), beside
    a good shard: that ended the whole run with "unexpected error: ValueError"."""
    spec = ShardSpec(0, images=4, width=64, height=48, masks=3, pad_bytes=0)
    raw = bytearray(zlib.decompress(make_shard(tmp_path / "a.tar", spec).read_bytes(), 31))
    raw[124:136] = b"00000009999\0"  # the first member's header
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    store = Store(site.root)
    install(store, NAME, zlib.compress(bytes(raw), 6, wbits=31))
    install(store, "sa_000001.tar", make_shard(tmp_path / "b.tar", spec).read_bytes())
    out = site.root / "out"
    args = ("extract", "--root", str(site.root), "--out", str(out), "--shards", "0,1")
    done = site.run(*args, "--salvage")
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "unexpected error" not in said and "Traceback" not in said, said
    assert any(NAME in line and "salvaged" in line for line in said.splitlines()), said
    assert len(list((out / "sa_000001").glob("*.jpg"))) == 4  # the shard beside it, whole
