"""One name per state and per field, in words for people and in snake_case for --json."""

from __future__ import annotations

import re

import pytest

from tests.site import Site

pytestmark = pytest.mark.slow


def test_every_command_names_a_state_the_same_way(site: Site):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--shards", "0").returncode == 0
    tar = site.root / "tars" / "sa_000000.tar"
    data = bytearray(tar.read_bytes())
    data[-600] ^= 0xFF  # the bytes no longer match their record
    tar.write_bytes(bytes(data))
    one = ("--shards", "1")
    seen = {
        "verify": site.run_json("verify", "--root", root, *one)[1]["shards"][0]["status"],
        "extract": site.run_json("extract", "--root", root, *one)[1]["shards"][0]["status"],
        "status": site.run_json("status", "--root", root, *one)[1]["shards"][0]["status"],
    }
    assert set(seen.values()) == {"missing"}, seen
    assert site.run("verify", "--root", root, "--shards", "0").returncode == 1
    bad = {
        "extract": site.run_json("extract", "--root", root, "--shards", "0")[1]["shards"][0],
        "status": site.run_json("status", "--root", root, "--shards", "0")[1]["shards"][0],
    }
    assert bad["extract"]["status"] == bad["status"]["status"] == "failed_verification"
    text = site.run("status", "--root", root, "--shards", "0-2")
    assert "failed verification" in text.stdout and "failed_verification" not in text.stdout
    assert "3 shards:" in text.stdout
    text = site.run("extract", "--root", root, "--shards", "1")
    assert "1 shard: 1 missing" in text.stderr + text.stdout, text
    assert not re.search(r"\b1 shards\b", text.stderr + text.stdout)


def test_json_reports_share_their_field_names(site: Site):
    links, root = str(site.manifest()), str(site.root)
    reports = {
        "download": site.run_json("download", "--links", links, "--root", root)[1],
        "verify": site.run_json("verify", "--root", root)[1],
        "extract": site.run_json("extract", "--root", root)[1],
        "status": site.run_json("status", "--root", root)[1],
    }
    for command, report in reports.items():
        assert report["command"] == command and report["exit_code"] == 0
        assert "elapsed_seconds" not in report
    for command in ("download", "verify", "extract"):
        assert isinstance(reports[command]["seconds"], float)
