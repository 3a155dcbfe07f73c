"""The README's cluster guide under a real SLURM: the shipped sbatch script, run as a job array,
one task cancelled and resubmitted, one task warned of its time limit and requeued.

Skips (and says why) when SLURM cannot start here: it needs root and Debian's packages.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.site import SA1B, Site, build_site, wait_for
from tests.slurm.cluster import Cluster, Unavailable, start_cluster

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "sa1b.sbatch"
SHARDS = 6


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        started = start_cluster()
    except Unavailable as exc:
        pytest.skip(f"no throwaway SLURM here: {exc}")
    print(f"\nSLURM started in {started.started_in:.2f} s")
    yield started
    started.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    built = build_site(tmp_path, shards=SHARDS, images=4, pad=150_000)  # ~600 KB shards
    built.mirror.faults.rate = 120_000  # per connection: a task takes a few seconds
    yield built
    built.mirror.stop()


def submit(cluster: Cluster, site: Site, *args: str) -> str:
    settings = {
        "SA1B_ROOT": str(site.root),
        "SA1B_LINKS": str(site.tmp / "links.txt"),
        "SA1B_OUT": str(site.tmp / "out"),
        "SA1B_BIN": SA1B,
        "SA1B_JOBS": "1",
        "SA1B_CONNECTIONS": "2",
        "SA1B_PARTS": "3",
    }
    export = ",".join(["ALL", *(f"{k}={v}" for k, v in settings.items())])
    return cluster.sbatch(
        f"--export={export}",
        f"--chdir={site.tmp}",
        f"--output={site.tmp}/task-%a.log",
        "--cpus-per-task=1",  # the script asks for 8; this node has 2
        *args,
        str(SCRIPT),
    )


def wait_until_gone(cluster: Cluster, *jobs: str, timeout: float = 150) -> None:
    wait_for(
        lambda: not any(cluster.jobs(job) for job in jobs), timeout=timeout, what="jobs to end"
    )


def record(site: Site, name: str) -> dict[str, Any]:
    path = site.root / "state" / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def mid_shard(site: Site, name: str) -> bool:
    data = record(site, name)
    return data.get("status") == "partial" and sum(e - s for s, e in data.get("spans") or []) > 0


def fetches_from_zero(site: Site) -> Counter[str]:
    """Requests that start a shard at byte 0 (the one-byte size probe does not count)."""
    starts = Counter[str]()
    for r in site.mirror.requests:
        asked = r["range"]
        if r.get("published") or asked == "bytes=0-0":
            continue
        if asked is None or str(asked).startswith("bytes=0-"):
            starts[str(r["name"])] += 1
    return starts


def assert_all_done(site: Site) -> None:
    names = [f"sa_{k:06d}.tar" for k in range(SHARDS)]
    for name in names:
        assert (site.root / "tars" / name).read_bytes() == site.source(name)
        assert (site.tmp / "out" / "index" / f"{name.removesuffix('.tar')}.csv").is_file()
    code, status = site.run_json("status", "--root", str(site.root))
    states = {s["name"]: s["status"] for s in status["shards"]}
    assert code == 0 and all(states[n] == "complete" for n in names), states
    code, report = site.run_json("verify", "--root", str(site.root))
    assert code == 0 and {s["status"] for s in report["shards"]} == {"ok"}
    starts = fetches_from_zero(site)
    assert all(n == 1 for n in starts.values()), starts  # no shard fetched from zero twice


def test_array_task_cancelled_and_resubmitted(cluster: Cluster, site: Site):
    site.manifest()
    job = submit(cluster, site, "--array=0-2")
    victim = "sa_000001.tar"  # part 1 of 3 holds shards 1 and 4
    wait_for(lambda: mid_shard(site, victim), timeout=90, what=f"{victim} under way")
    cluster.run("scancel", f"{job}_1")
    wait_for(lambda: f"{job}_1" not in cluster.jobs(job), timeout=60, what="the cancel")
    kept = sum(e - s for s, e in record(site, victim).get("spans") or [])
    before = len(site.mirror.requests)

    again = submit(cluster, site, "--array=1")
    wait_until_gone(cluster, job, again)
    assert_all_done(site)
    log = (site.tmp / "task-1.log").read_text()
    assert "interrupted" in log or "stopping" in log, log[-2000:]
    refetched = [r["range"] for r in site.mirror.requests[before:] if r["name"] == victim]
    assert kept > 0 and refetched and None not in refetched
    print(f"\ncancelled task kept {kept:,} bytes of {victim}; re-asked {refetched}")


def test_time_limit_signal_saves_progress_and_requeues(cluster: Cluster, site: Site):
    site.manifest()
    job = submit(cluster, site, "--array=0")
    wait_for(lambda: mid_shard(site, "sa_000000.tar"), timeout=90, what="a shard under way")
    # What SLURM does at --signal=B:USR1@120: USR1 to the batch shell alone.
    cluster.run("scancel", "--signal=USR1", "--batch", f"{job}_0")
    wait_for(
        lambda: "requeueing" in (site.tmp / "task-0.log").read_text(),
        timeout=60,
        what="the script to requeue itself",
    )
    log_file = site.tmp / "task-0.log"
    # SLURM lets a requeued job start again after about two minutes. Forcing it sooner
    # (scontrol update StartTime=now) races slurmd, which refuses a job it just killed.
    wait_for(lambda: "restart 1" in log_file.read_text(), timeout=240, what="the second run")
    wait_until_gone(cluster, job)
    log = log_file.read_text()
    assert log.count("task 0 on") == 2, log[-2000:]  # --open-mode=append kept the first run
    for k in (0, 3):  # part 0 of 3
        name = f"sa_{k:06d}.tar"
        assert (site.root / "tars" / name).read_bytes() == site.source(name)
    starts = fetches_from_zero(site)
    assert starts["sa_000000.tar"] == 1, starts


def test_part_auto_outside_an_array_explains_itself(cluster: Cluster, site: Site):
    out = site.tmp / "plain.log"
    cluster.sbatch(
        f"--output={out}",
        "--wait",
        "--wrap",
        f"{SA1B} status --root {site.root} --part auto; echo exit=$?",
    )
    text = out.read_text()
    assert "not a job array" in text and "exit=2" in text, text
    assert "sbatch --array" in text
