"""End to end: parts of one selection on one root, a SIGKILLed part re-run, --workers."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from sa1b_cli.core.selection import part_of
from tests.site import Site, build_site, wait_for

pytestmark = pytest.mark.slow
PARTS = 3


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    built = build_site(tmp_path, shards=6, images=4, pad=120_000)  # ~500 KB shards
    yield built
    built.mirror.stop()


def full_fetches(site: Site, since: int = 0) -> Counter[str]:
    requests = site.mirror.requests[since:]
    return Counter(r["name"] for r in requests if r["range"] is None)  # type: ignore[misc]


def test_parts_share_a_root_and_a_killed_part_resumes(site: Site):
    links, root = str(site.manifest()), str(site.root)
    site.mirror.faults.rate = 200_000
    common = ("download", "--links", links, "--root", root, "--jobs", "1", "--json")
    procs = [site.popen(*common, "--part", f"{i}/{PARTS}") for i in range(PARTS)]
    victim_shard = "sa_000000.tar"  # part 0 of 3 begins with shard 0
    record = site.root / "state" / f"{victim_shard}.json"
    wait_for(
        lambda: record.exists() and json.loads(record.read_text())["durable_bytes"] > 0,
        what="a checkpoint in part 0",
    )
    procs[0].send_signal(signal.SIGKILL)
    procs[0].communicate()
    killed_at = len(site.mirror.requests)
    kept = json.loads(record.read_text())["durable_bytes"]
    for proc in procs[1:]:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    status = site.run_json("status", "--root", root)[1]
    held = {s["name"]: s["status"] for s in status["shards"]}
    assert held[victim_shard] in ("partial", "missing")  # the dead claim is not "active"

    site.mirror.faults.rate = None
    code, report = site.run_json(*common[:-1], "--part", f"0/{PARTS}")
    assert code == 0, report
    for k in range(6):
        name = f"sa_{k:06d}.tar"
        assert (site.root / "tars" / name).read_bytes() == site.source(name)
    fetches = full_fetches(site)
    assert all(n == 1 for name, n in fetches.items() if part_of(name, PARTS)), fetches
    # The dead part may have started its next shard in the first one's tail (nothing of it
    # durable yet, so fetched again); after the kill, nothing is fetched whole twice.
    again = full_fetches(site, since=killed_at)
    assert all(n == 1 for n in again.values()), again
    resumed = [r for r in site.ranges(victim_shard) if r and r != "bytes=0-0"]
    assert resumed == [f"bytes={kept}-"]


def test_verify_and_extract_by_part_cover_everything_once(site: Site):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--jobs", "3").returncode == 0
    verified: Counter[str] = Counter()
    extracted: Counter[str] = Counter()
    for command, seen in (("verify", verified), ("extract", extracted)):
        procs = [
            site.popen(command, "--root", root, "--part", f"{i}/{PARTS}", "--json")
            for i in range(PARTS)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            seen.update(s["name"] for s in json.loads(out)["shards"])
    expected = {f"sa_{k:06d}.tar" for k in range(6)}
    assert set(verified) == expected and set(verified.values()) == {1}
    assert set(extracted) == expected and set(extracted.values()) == {1}
    index = (site.root / "extracted" / "index.csv").read_text().splitlines()
    assert len(index) == 1 + 6 * 4


def test_workers_split_one_download_across_processes(site: Site):
    links, root = str(site.manifest()), str(site.root)
    code, report = site.run_json(
        "download", "--links", links, "--root", root, "--workers", "2", "--jobs", "2"
    )
    assert code == 0, report
    assert sorted(s["name"] for s in report["shards"]) == [f"sa_{k:06d}.tar" for k in range(6)]
    assert set(full_fetches(site).values()) == {1}
    for k in range(6):
        name = f"sa_{k:06d}.tar"
        assert (site.root / "tars" / name).read_bytes() == site.source(name)


def test_part_auto_outside_slurm_explains(site: Site):
    done = site.run(
        "download", "--links", str(site.manifest()), "--root", str(site.root), "--part", "auto"
    )
    assert done.returncode == 2 and "SLURM_ARRAY_TASK_ID" in done.stderr


def test_workers_with_extract_pipeline_in_each_process(site: Site, tmp_path: Path):
    links, root, out = str(site.manifest()), str(site.root), tmp_path / "data"
    code, report = site.run_json(
        "download",
        "--links",
        links,
        "--root",
        root,
        "--workers",
        "2",
        "--extract",
        "--out",
        str(out),
    )
    assert code == 0, report
    assert sorted(s["name"] for s in report["extract"]["shards"]) == [
        f"sa_{k:06d}.tar" for k in range(6)
    ]
    assert {s["status"] for s in report["extract"]["shards"]} == {"extracted"}
    assert len((out / "index.csv").read_text().splitlines()) == 1 + 6 * 4


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_time_limit_signal_checkpoints_and_exits_130(site: Site, sig: signal.Signals, workers: str):
    """What SLURM sends before --time runs out (--signal=B:USR1@120, passed on by the script)."""
    links, root = str(site.manifest()), str(site.root)
    site.mirror.faults.rate = 150_000
    proc = site.popen(
        "download", "--links", links, "--root", root, "--jobs", "2", "--workers", workers, "--json"
    )
    record = site.root / "state" / "sa_000000.tar.json"
    wait_for(
        lambda: record.exists() and json.loads(record.read_text())["spans"],
        what="a checkpoint",
    )
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # "interrupted, progress kept"
    statuses = {s["status"] for s in json.loads(out)["shards"]}
    assert "interrupted" in statuses
    kept = sum(e - s for s, e in json.loads(record.read_text())["spans"])
    assert kept > 0

    site.mirror.faults.rate = None
    before = len(site.mirror.requests)
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    again = [r["range"] for r in site.mirror.requests[before:] if r["name"] == "sa_000000.tar"]
    assert again and None not in again and "bytes=0-" not in again  # continued, not restarted
    assert (site.root / "tars" / "sa_000000.tar").read_bytes() == site.source("sa_000000.tar")


def test_verify_stops_on_a_time_limit_signal(site: Site):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    proc = site.popen("verify", "--root", root, "--deep", "--decode-masks", "--jobs", "1")
    time.sleep(0.6)  # inside the command (or still starting: the answer must be the same)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err  # finished first, or stopped cleanly
    assert "Traceback" not in err
