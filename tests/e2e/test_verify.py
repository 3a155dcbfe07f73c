"""End to end: verify through the installed command, and the verify -> download loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.site import Site

pytestmark = pytest.mark.slow


def test_corrupt_shard_fails_verify_and_is_fetched_again(site: Site):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    victim = site.root / "tars" / "sa_000001.tar"
    data = bytearray(victim.read_bytes())
    data[5000] ^= 0xFF
    victim.write_bytes(bytes(data))

    done = site.run("verify", "--root", root)
    assert done.returncode == 1
    assert "sa_000001.tar" in done.stdout and "digest mismatch" in done.stdout
    assert "sa1b download" in done.stdout

    before = len(site.mirror.requests)
    code, report = site.run_json("download", "--links", links, "--root", root)
    assert code == 0
    refetched = {s["name"] for s in report["shards"] if s["status"] == "downloaded"}
    assert refetched == {"sa_000001.tar"}
    assert [r["range"] for r in site.mirror.requests[before:]][-1] is None
    assert victim.read_bytes() == site.source("sa_000001.tar")

    code, report = site.run_json("verify", "--root", root, "--deep", "--jobs", "2")
    assert code == 0, report
    assert {s["status"] for s in report["shards"]} == {"ok"}
    assert report["images_per_s"] > 0 and report["throughput_mib_s"] > 0
    assert sum(s["images"] for s in report["shards"]) == 18


def test_verify_with_a_community_list_that_disagrees(site: Site, tmp_path: Path):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--subset", "2").returncode == 0
    listing = tmp_path / "community.md5"
    listing.write_text(f"{'0' * 32}  sa_000000.tar\n")
    code, report = site.run_json(
        "verify", "--root", root, "--subset", "2", "--checksums", str(listing)
    )
    assert code == 1
    statuses = {s["name"]: s["status"] for s in report["shards"]}
    assert statuses == {"sa_000000.tar": "digest_mismatch", "sa_000001.tar": "not_covered"}


def test_verify_usage_errors(site: Site):
    done = site.run("verify", "--root", str(site.root), "--export", "x", "--algo", "crc")
    assert done.returncode == 2 and "--algo" in done.stderr
    done = site.run("verify", "--root", str(site.root), "--checksums", str(site.tmp / "none.md5"))
    assert done.returncode == 2 and "cannot read checksum list" in done.stderr


def test_empty_root_says_what_to_do_and_creates_nothing(site: Site):
    root = site.tmp / "fresh"
    done = site.run("status", "--root", str(root))
    assert done.returncode == 0 and "run sa1b download" in done.stdout
    done = site.run("verify", "--root", str(root))
    assert done.returncode == 0 and "nothing to verify" in done.stdout
    done = site.run("extract", "--root", str(root), "--subset", "1")
    assert done.returncode == 1 and "missing" in done.stderr
    assert not root.exists()
