"""End to end: the installed sa1b command against the loopback mirror, with injected faults."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from tests.site import Site, ext4, tmpfs, wait_for

pytestmark = pytest.mark.slow


def durable_bytes(root: Path, name: str) -> int:
    record = root / "state" / f"{name}.json"
    return json.loads(record.read_text())["durable_bytes"] if record.exists() else 0


def test_download_subset_is_exact_checked_and_xxhsum_compatible(site: Site):
    links = site.manifest()
    code, report = site.run_json(
        "download", "--links", str(links), "--root", str(site.root), "--subset", "2"
    )
    assert code == 0, report
    assert [s["name"] for s in report["shards"]] == ["sa_000000.tar", "sa_000001.tar"]
    for name in ("sa_000000.tar", "sa_000001.tar"):
        assert (site.root / "tars" / name).read_bytes() == site.source(name)
    assert not (site.root / "tars" / "sa_000002.tar").exists()
    line = (site.root / "checksums.xxh128").read_text().splitlines()[0]
    assert (
        line == f"{xxhash.xxh3_128(site.source('sa_000000.tar')).hexdigest()}  tars/sa_000000.tar"
    )
    assert all(r["raw_query_has_bare_nc_gid"] for r in site.mirror.requests)
    if shutil.which("xxhsum") is None:
        pytest.skip("xxhsum is not installed; the format was checked above")
    check = subprocess.run(
        ["xxhsum", "-c", "checksums.xxh128"],
        cwd=site.root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_second_run_fetches_nothing_and_aux_rows_are_selectable(site: Site):
    links = str(site.manifest())
    assert site.run("download", "--links", links, "--root", str(site.root)).returncode == 0
    before = len(site.mirror.requests)
    code, report = site.run_json(
        "download", "--links", links, "--root", str(site.root), "--shards", "0-2,sa_images_ids.txt"
    )
    assert code == 0
    statuses = {s["name"]: s["status"] for s in report["shards"]}
    assert statuses == {
        "sa_000000.tar": "present",
        "sa_000001.tar": "present",
        "sa_000002.tar": "present",
        "sa_images_ids.txt": "downloaded",
    }
    assert {r["name"] for r in site.mirror.requests[before:]} == {"sa_images_ids.txt"}


def test_kill_9_then_resume_continues_from_the_partial_bytes(big_site: Site):
    site = big_site
    links = str(site.manifest())
    site.mirror.faults.rate = 150_000
    name = "sa_000000.tar"
    proc = site.popen("download", "--links", links, "--root", str(site.root), "--shards", "0")
    wait_for(lambda: durable_bytes(site.root, name) > 0, what="a checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = durable_bytes(site.root, name)
    site.mirror.faults.rate = None
    done = site.run("download", "--links", links, "--root", str(site.root), "--shards", "0")
    assert done.returncode == 0, done.stderr
    assert (site.root / "tars" / name).read_bytes() == site.source(name)
    resumed_at = int(site.ranges(name)[-1].removeprefix("bytes=").rstrip("-"))  # type: ignore[union-attr]
    assert resumed_at >= kept > 0


def test_ctrl_c_exits_130_and_keeps_progress(big_site: Site):
    site = big_site
    links = str(site.manifest())
    site.mirror.faults.rate = 150_000
    proc = site.popen("download", "--links", links, "--root", str(site.root), "--shards", "0")
    wait_for(
        lambda: (
            (site.root / "tars" / "sa_000000.tar.part").exists()
            and (site.root / "tars" / "sa_000000.tar.part").stat().st_size > 0
        ),
        what="bytes",
    )
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    # The shard may have been split across connections: what was kept is the set of durable
    # ranges in the record (not the part file's size), and each of them holds the source's bytes.
    record = json.loads((site.root / "state" / "sa_000000.tar.json").read_text())
    spans = record["spans"] or [[0, record["durable_bytes"]]]
    part = (site.root / "tars" / "sa_000000.tar.part").read_bytes()
    source = site.source("sa_000000.tar")
    assert sum(end - start for start, end in spans) > 0
    for start, end in spans:
        assert part[start:end] == source[start:end]


def test_two_concurrent_runs_share_the_work_without_corruption(big_site: Site):
    site = big_site
    links = str(site.manifest())
    site.mirror.faults.rate = 400_000
    args = ("download", "--links", links, "--root", str(site.root), "--jobs", "1", "--json")
    first, second = site.popen(*args), site.popen(*args)
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in (first, second)]
    for name in ("sa_000000.tar", "sa_000001.tar"):
        assert (site.root / "tars" / name).read_bytes() == site.source(name)
        full_gets = [r for r in site.ranges(name) if r is None]
        assert len(full_gets) == 1, f"{name} was downloaded more than once"
    statuses = sorted(s["status"] for o in outs for s in o["shards"])
    assert statuses.count("downloaded") == 2


def test_expired_links_stop_then_a_fresh_manifest_continues(big_site: Site):
    site = big_site
    name = "sa_000000.tar"
    old = site.manifest(expires_in=3, name="old.txt")  # room for a slow interpreter start
    site.mirror.faults.rate = 100_000
    site.mirror.faults.drop_after[name] = 400_000  # at ~4 s: the retry comes after the expiry
    code, report = site.run_json(
        "download",
        "--links",
        str(old),
        "--root",
        str(site.root),
        "--shards",
        "0",
        "--timeout",
        "30",
    )
    assert code == 1
    (shard,) = report["shards"]
    assert shard["status"] == "expired" and "fresh manifest" in shard["hint"]
    kept = (site.root / "tars" / f"{name}.part").stat().st_size
    assert kept > 0
    done = site.run("download", "--shards", "0", "--root", str(site.root), "--links", str(old))
    assert done.returncode == 1 and "expired" in done.stderr and "00_" not in done.stderr
    site.mirror.faults.rate = None
    fresh = site.manifest(name="fresh.txt")
    done = site.run("download", "--links", str(fresh), "--root", str(site.root), "--shards", "0")
    assert done.returncode == 0, done.stderr
    assert (site.root / "tars" / name).read_bytes() == site.source(name)
    assert site.ranges(name)[-1] == f"bytes={durable_bytes_before(kept)}-"


def durable_bytes_before(kept: int) -> int:
    return kept


def test_rejected_link_fails_fast_and_never_prints_the_signature(site: Site):
    links = site.manifest()
    text = links.read_text().replace("oh=00_", "oh=00_x")
    links.write_text(text)
    done = site.run("download", "--links", str(links), "--root", str(site.root), "--shards", "0")
    assert done.returncode == 1
    assert "signature mismatch" in done.stderr
    assert "oh=" not in done.stderr + done.stdout and "_nc_sid" not in done.stderr


def test_hostile_manifest_is_refused_with_its_line(site: Site, tmp_path: Path):
    links = site.manifest()
    lines = links.read_text().split("\n")
    lines.insert(2, "../../etc/cron.d/evil\t" + lines[1].split("\t")[1])
    links.write_text("\n".join(lines))
    done = site.run("links", str(links))
    assert done.returncode == 2
    assert "line 3" in done.stderr and "unsafe file name" in done.stderr
    assert "Traceback" not in done.stderr


def test_links_summary_json(site: Site):
    code, summary = site.run_json("links", str(site.manifest()))
    assert code == 0
    assert summary["shards"] == 3 and summary["aux"] == ["sa_images_ids.txt"]
    assert summary["missing_shards"] == "3-999" and summary["seconds_left"] > 86400


def test_status_reports_partial_and_complete(big_site: Site):
    site = big_site
    links = str(site.manifest())
    assert (
        site.run("download", "--links", links, "--root", str(site.root), "--shards", "1").returncode
        == 0
    )
    (site.root / "tars" / "sa_000000.tar.part").write_bytes(b"x" * 1000)
    code, report = site.run_json("status", "--root", str(site.root))
    assert code == 0
    states = {s["name"]: s["status"] for s in report["shards"]}
    assert states["sa_000001.tar"] == "complete" and states["sa_000000.tar"] == "partial"


def test_usage_errors_exit_2(site: Site):
    done = site.run("download", "--links", str(site.manifest()), "--subset", "0%")
    assert done.returncode == 2 and "--subset" in done.stderr
    done = site.run("download", "--links", str(site.tmp / "nope.txt"))
    assert done.returncode == 2 and "not found" in done.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "tiny", "size=1600k", why="a small tmpfs") as mount:
        yield mount


@pytest.fixture
def tiny_ext4(tmp_path: Path) -> Iterator[Path]:
    """A small ext4: there a part file's blocks are allocated ahead of the writes."""
    with ext4(tmp_path / "tiny", 2048, why="a small ext4 (mkfs.ext4, a loop device)") as mount:
        yield mount


def test_not_enough_space_is_refused_up_front(big_site: Site, tiny_disk: Path):
    (tiny_disk / "filler").write_bytes(b"\0" * 900_000)
    done = big_site.run(
        "download",
        "--links",
        str(big_site.manifest()),
        "--root",
        str(tiny_disk / "root"),
        "--subset",
        "2",
    )
    assert done.returncode == 1
    assert "GiB more" in done.stderr and "Traceback" not in done.stderr


def test_disk_filling_mid_run_keeps_partial_bytes(big_site: Site, tiny_disk: Path):
    site = big_site
    site.mirror.faults.rate = 100_000  # per connection: the first checkpoint comes at 1/3
    root = tiny_disk / "root"
    proc = site.popen(
        "download",
        "--links",
        str(site.manifest()),
        "--root",
        str(root),
        "--subset",
        "2",
        "--jobs",
        "2",
    )
    wait_for(lambda: durable_bytes(root, "sa_000000.tar") > 0, what="a checkpoint")
    free = shutil.disk_usage(tiny_disk).free
    # sa1b writes too meanwhile: the filler may itself meet ENOSPC, and the disk is full then.
    with contextlib.suppress(OSError), (tiny_disk / "filler").open("wb") as filler:
        filler.write(b"\0" * max(0, free - 4096))
    site.mirror.faults.rate = None
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "disk is full" in stderr and "sa_00000" in stderr and "Traceback" not in stderr
    assert durable_bytes(root, "sa_000000.tar") > 0
    (tiny_disk / "filler").unlink()
    time.sleep(0.1)


def test_on_ext4_a_disk_filled_after_the_blocks_were_allocated_stops_nothing(
    big_site: Site, tiny_ext4: Path
):
    site = big_site
    site.mirror.faults.rate = 100_000  # per connection: the first checkpoint comes at 1/3
    root = tiny_ext4 / "root"
    proc = site.popen(
        "download", "--links", str(site.manifest()), "--root", str(root), "--subset", "2"
    )
    wait_for(lambda: durable_bytes(root, "sa_000000.tar") > 0, what="a checkpoint")
    free = shutil.disk_usage(tiny_ext4).free
    with contextlib.suppress(OSError), (tiny_ext4 / "filler").open("wb") as filler:
        filler.write(b"\0" * free)  # meets ENOSPC: the shards' blocks were taken already
    assert shutil.disk_usage(tiny_ext4).free < 64 << 10
    site.mirror.faults.rate = None
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    for name in ("sa_000000.tar", "sa_000001.tar"):
        assert (root / "tars" / name).read_bytes() == site.source(name)


@pytest.mark.parametrize(("split", "delay"), [(False, 0.4), (False, 1.1), (True, 0.7)])
def test_ctrl_c_keeps_every_byte_it_wrote_and_counts_them_exactly(
    tmp_path: Path, split: bool, delay: float
):
    from tests.site import build_site

    site = build_site(tmp_path, shards=1, images=4, pad=2_000_000)  # ~8 MB
    try:
        name, links, root = "sa_000000.tar", str(site.manifest()), str(site.root)
        site.mirror.faults.rate = 400_000  # per connection
        args = ("download", "--links", links, "--root", root, "--json")
        proc = site.popen(*args, *(() if split else ("--no-split",)))
        part = site.root / "tars" / f"{name}.part"
        wait_for(lambda: part.exists() and part.stat().st_size > 200_000, what="bytes")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        record = json.loads((site.root / "state" / f"{name}.json").read_text())
        kept = sum(end - start for start, end in record["spans"])
        shard = json.loads(out)["shards"][0]
        assert shard["bytes_fetched"] == shard["bytes_done"] == kept > 0
        data, source = part.read_bytes(), site.source(name)
        for start, end in record["spans"]:
            assert data[start:end] == source[start:end]
        if not split:  # one stream: the record names every byte in the file
            assert record["spans"] == [[0, len(data)]]
        site.mirror.faults.rate = None
        code, again = site.run_json(*args[:-1])
        assert code == 0 and again["shards"][0]["bytes_fetched"] == len(source) - kept
        assert (site.root / "tars" / name).read_bytes() == source
    finally:
        site.mirror.stop()


def test_expired_links_are_said_once_and_leave_nothing_behind(site: Site):
    links, root = str(site.manifest(expires_in=-3600)), str(site.root)
    done = site.run("download", "--links", links, "--root", root)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "expired" in line]
    assert len(lines) == 2, done.stderr  # the count, then one line with the when and what next
    assert lines[0].startswith("3 shards: 3 expired")
    assert "The links expired on" in lines[1] and "3 shards stopped (0-2)" in lines[1]
    assert "--links NEW_MANIFEST" in lines[1] and "kept" not in done.stderr
    assert "need attention" not in done.stderr and "((" not in done.stderr
    assert not list(site.root.glob("tars/*")) and not site.mirror.requests
    code, report = site.run_json("download", "--links", links, "--root", root)
    assert code == 1 and {s["detail"] for s in report["shards"]} == {"its 'oe' time has passed"}


def test_links_warns_of_expired_links_in_text_and_json(site: Site):
    links = str(site.manifest(expires_in=-3 * 86400))
    done = site.run("links", links)
    assert done.returncode == 0 and done.stdout.count("expired on") == 1
    code, report = site.run_json("links", "--links", links)
    (warning,) = report["warnings"]
    assert code == 0 and "expired on" in warning and "--links" in warning
    assert not site.run_json("links", str(site.manifest()))[1]["warnings"]


def test_a_link_or_folder_planted_at_a_shards_path_fails_that_shard_only(site: Site):
    """On a shared root anyone may leave a link at a .part path: never write through it."""
    tars = site.root / "tars"
    tars.mkdir(parents=True)
    outside = site.tmp / "precious.txt"
    outside.write_bytes(b"precious")
    (tars / "sa_000000.tar.part").symlink_to(outside)
    (tars / "sa_000001.tar").mkdir()  # the final name: the checked part file must stay
    links = str(site.manifest())
    first = site.run("download", "--links", links, "--root", str(site.root))
    assert first.returncode == 1, first.stderr
    assert outside.read_bytes() == b"precious"
    assert "sa_000000.tar.part is a symbolic link" in first.stderr
    assert "sa_000001.tar is a directory" in first.stderr
    assert "Traceback" not in first.stderr and "unexpected" not in first.stderr
    assert (tars / "sa_000002.tar").read_bytes() == site.source("sa_000002.tar")
    (tars / "sa_000000.tar.part").unlink()
    (tars / "sa_000001.tar").rmdir()
    before = len(site.mirror.requests)
    again = site.run("download", "--links", links, "--root", str(site.root))
    assert again.returncode == 0, again.stderr
    for name in site.names[:3]:
        assert (tars / name).read_bytes() == site.source(name)
    # sa_000001.tar's bytes were whole and checked: the second run asks only past its end
    size = len(site.source("sa_000001.tar"))
    asked = [r["range"] for r in site.mirror.requests[before:] if r["name"] == "sa_000001.tar"]
    assert asked in ([], [f"bytes={size}-"])


@pytest.mark.parametrize(
    "where",
    [
        "state/sa_000000.tar.json",
        "claims/sa_000000.tar.claim",
        "extracted/.done/sa_000000.json",
        "extracted/index/sa_000001.csv",  # beside sa_000001's marker: read for the lists
    ],
)
def test_a_named_pipe_among_sa1b_s_own_files_blocks_no_command(site: Site, where: str):
    """A record, claim, marker or index is a file sa1b wrote: a pipe there waited forever."""
    links, root = str(site.manifest()), str(site.root)
    first = site.run("download", "--links", links, "--root", root, "--shards", "1", "--extract")
    assert first.returncode == 0
    (site.root / where).parent.mkdir(parents=True, exist_ok=True)
    (site.root / where).unlink(missing_ok=True)
    os.mkfifo(site.root / where)
    for args in (("status",), ("verify",), ("download", "--links", links, "--extract")):
        done = site.run(*args, "--root", root, timeout=60)  # a pipe opened blocks: it times out
        assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    assert (site.root / "tars" / "sa_000000.tar").read_bytes() == site.source("sa_000000.tar")
