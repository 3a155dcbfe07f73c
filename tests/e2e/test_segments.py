"""End to end: one shard over parallel Range connections, against the loopback mirror."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from sa1b_cli.devtools.mirror import Mirror
from tests.site import Site, wait_for

pytestmark = pytest.mark.slow
SIZE = 40 << 20  # five default 8 MiB pieces at least: room for several connections


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    folder = tmp_path / "cdn"
    folder.mkdir()
    rng = random.Random(5)
    names = []
    for index, size in enumerate((SIZE, SIZE // 2, SIZE // 2)):
        name = f"sa_{index:06d}.tar"
        (folder / name).write_bytes(rng.randbytes(size))
        names.append(name)
    built = Site(tmp_path, Mirror(folder).start(), names)
    yield built
    built.mirror.stop()


def ranges(site: Site, name: str, since: int = 0) -> list[tuple[int, int]]:
    """Byte ranges requested for ``name`` (open ends resolved to the file's size)."""
    size = (site.mirror.folder / name).stat().st_size
    found = []
    for entry in site.mirror.requests[since:]:
        if entry["name"] != name or entry.get("status") or entry["range"] == "bytes=0-0":
            continue
        wanted = str(entry["range"] or "bytes=0-").removeprefix("bytes=")
        first, _, last = wanted.partition("-")
        found.append((int(first), int(last) + 1 if last else size))
    return found


def test_kill_9_mid_split_then_a_fresh_manifest_refetches_nothing_durable(site: Site):
    name = "sa_000000.tar"
    site.mirror.faults.rate = 3_000_000  # per connection: the run lasts a few seconds
    args = ("download", "--root", str(site.root), "--shards", "0", "--quiet")
    proc = site.popen(*args, "--links", str(site.manifest()))
    record = site.root / "state" / f"{name}.json"

    def durable_spans() -> list[list[int]]:
        if not record.exists():
            return []
        return json.loads(record.read_text()).get("spans") or []

    wait_for(lambda: sum(e - s for s, e in durable_spans()) > 4 << 20, what="a checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = durable_spans()
    assert len(ranges(site, name)) > 1  # it was split
    before = len(site.mirror.requests)

    site.mirror.faults.rate = None
    fresh = site.manifest(name="fresh.txt")  # new signatures, same object paths
    done = site.run(*args, "--links", str(fresh))
    assert done.returncode == 0, done.stderr
    assert (site.root / "tars" / name).read_bytes() == site.source(name)
    for first, end in ranges(site, name, since=before):
        for start, stop in kept:
            assert end <= start or first >= stop, f"{first}-{end} was durable ({start}-{stop})"


def test_a_mirror_that_ignores_range_past_zero_never_corrupts_a_file(site: Site):
    site.mirror.faults.ignore_range_past_zero = True
    code, report = site.run_json(
        "download", "--links", str(site.manifest()), "--root", str(site.root), "--shards", "0"
    )
    assert code == 0, report
    (shard,) = report["shards"]
    assert shard["status"] == "downloaded" and "one connection" in shard["fallback"]
    assert (site.root / "tars" / "sa_000000.tar").read_bytes() == site.source("sa_000000.tar")
    done = site.run(
        "download", "--links", str(site.manifest()), "--root", str(site.root), "--shards", "1"
    )
    assert done.returncode == 0 and "fell back to one connection" in done.stderr


def test_a_mirror_that_serves_three_bodies_at_once_still_gets_every_shard(site: Site):
    site.mirror.faults.max_bodies = 3
    site.mirror.faults.rate = 20_000_000
    code, report = site.run_json(
        "download", "--links", str(site.manifest()), "--root", str(site.root), "--timeout", "10"
    )
    assert code == 0, report
    assert {s["status"] for s in report["shards"]} == {"downloaded"}
    for name in site.names:
        assert (site.root / "tars" / name).read_bytes() == site.source(name)
    refused = sum(1 for r in site.mirror.requests if r.get("status") == 503)
    served = sum(1 for r in site.mirror.requests if not r.get("status"))
    assert refused <= 2 * served, f"{refused} refusals for {served} bodies: a retry storm"


def test_xxhsum_accepts_the_checksums_of_a_split_download(site: Site):
    code, report = site.run_json(
        "download", "--links", str(site.manifest()), "--root", str(site.root)
    )
    assert code == 0, report
    assert report["connections_peak"] > 1
    assert max(s["connections"] for s in report["shards"]) > 1
    lines = (site.root / "checksums.xxh128").read_text().splitlines()
    assert lines[0] == (
        f"{xxhash.xxh3_128(site.source('sa_000000.tar')).hexdigest()}  tars/sa_000000.tar"
    )
    if shutil.which("xxhsum") is None:
        pytest.skip("xxhsum is not installed; the format was checked above")
    check = subprocess.run(
        ["xxhsum", "-c", "checksums.xxh128"], cwd=site.root, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
