"""End to end: the community md5 list served by the loopback mirror, checked by verify and download.

The list here is synthetic (a real shard's md5 cannot be forged onto a synthetic shard), so
the test points sa1b at it with SA1B_KNOWN_URL / SA1B_KNOWN_SHA256, and names one shard's
copy as the known-bad mirror copy with SA1B_KNOWN_BAD.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.site import Site

pytestmark = pytest.mark.slow

GOOD, WRONG, MIRRORED = "sa_000000.tar", "sa_000001.tar", "sa_000002.tar"


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def publish_list(site: Site) -> bytes:
    """GOOD is listed right, WRONG and MIRRORED wrong; MIRRORED's real md5 is the 'bad copy'."""
    text = (
        f"{md5(site.source(GOOD))}  {GOOD}\n{'1' * 32}  {WRONG}\n{'2' * 32}  {MIRRORED}\n"
    ).encode()
    bad = site.tmp / "bad.md5"
    bad.write_text(f"{md5(site.source(MIRRORED))}  {MIRRORED}\n")
    site.extra_env = {
        "SA1B_KNOWN_URL": site.mirror.publish("checklist.txt", text) + "?token=secret",
        "SA1B_KNOWN_SHA256": hashlib.sha256(text).hexdigest(),
        "SA1B_KNOWN_BAD": str(bad),
    }
    return text


def list_fetches(site: Site) -> int:
    return sum(1 for r in site.mirror.requests if r.get("published"))


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in report["shards"]}


def test_verify_known_fetches_once_and_judges_each_shard(site: Site):
    text = publish_list(site)
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root).returncode == 0

    code, report = site.run_json("verify", "--root", root)  # not cached yet: no list, no fetch
    assert code == 0 and list_fetches(site) == 0
    assert all("md5=community" not in s["checks"] for s in report["shards"])

    code, report = site.run_json("verify", "--root", root, "--known")
    assert code == 1 and list_fetches(site) == 1
    assert (site.root / "known" / "community-md5.txt").read_bytes() == text
    shards = by_name(report)
    assert shards[GOOD]["status"] == "ok"
    assert shards[GOOD]["checks"] == ["present", "size", "xxh128=record", "md5=community"]
    assert shards[WRONG]["status"] == "digest_mismatch"
    assert "differs from the community list" in shards[WRONG]["detail"]
    assert "known-bad copy" in shards[MIRRORED]["detail"]

    # Cached now: on by default, no second fetch, and the md5 comes from the record.
    done = site.run("verify", "--root", root, "--shards", "0")
    assert done.returncode == 0 and "md5=community" in done.stdout and list_fetches(site) == 1
    record = json.loads((site.root / "state" / f"{GOOD}.json").read_text())
    assert record["digests"]["md5"] == md5(site.source(GOOD))
    assert record["checked"] == ["xxh128=record", "md5=community"]
    code, status = site.run_json("status", "--root", root)
    assert by_name(status)[GOOD]["checked"] == ["xxh128=record", "md5=community"]
    assert by_name(status)[WRONG]["status"] == "failed_verification"

    # The two bad ones are fetched again once; the fresh WRONG copy still disagrees: reported
    # as a dispute and left alone, so download -> verify cannot loop.
    code, report = site.run_json("download", "--links", links, "--root", root)
    assert code == 0
    assert {s["name"] for s in report["shards"] if s["status"] == "downloaded"} == {
        WRONG,
        MIRRORED,
    }
    code, report = site.run_json("verify", "--root", root)
    shards = by_name(report)
    assert code == 1 and shards[WRONG]["status"] == "disputed"
    assert "will not fetch it again" in shards[WRONG]["detail"]
    assert shards[MIRRORED]["status"] == "digest_mismatch"
    code, report = site.run_json("download", "--links", links, "--root", root)
    assert WRONG not in {s["name"] for s in report["shards"] if s["status"] == "downloaded"}

    done = site.run("verify", "--root", root, "--no-known")
    assert "md5=community" not in done.stdout and "disputed" not in done.stdout


def test_download_known_checks_on_arrival(site: Site):
    publish_list(site)
    links, root = str(site.manifest()), str(site.root)
    code, report = site.run_json(
        "download", "--links", links, "--root", root, "--shards", "0,1", "--known"
    )
    shards = by_name(report)
    assert code != 0 and shards[GOOD]["status"] == "downloaded"
    assert shards[WRONG]["status"] == "failed" and "md5" in shards[WRONG]["detail"]
    assert sum(1 for r in site.mirror.requests if r["name"] == WRONG) >= 2  # once more, then stop
    record = json.loads((site.root / "state" / f"{GOOD}.json").read_text())
    assert record["checked"] == ["md5=community"]


def test_no_network_explains_the_way_round(site: Site):
    publish_list(site)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    site.extra_env["SA1B_KNOWN_URL"] = f"http://127.0.0.1:{port}/checklist.txt?token=secret"
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--shards", "0").returncode == 0
    done = site.run("verify", "--root", root, "--known")
    assert done.returncode == 1
    assert "cannot fetch the community md5 list" in done.stderr
    assert "--checksums md5:FILE" in done.stderr and "secret" not in done.stderr
    code, payload = site.run_json("verify", "--root", root, "--known")
    assert code == 1 and "hint" in payload


def test_a_mirror_list_that_disagrees_loses_to_the_community_list(site: Site, tmp_path: Path):
    publish_list(site)
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--shards", "0").returncode == 0
    mirror_list = tmp_path / "mirror.md5"
    mirror_list.write_text(f"{'3' * 32}  {GOOD}\n")
    code, report = site.run_json(
        "verify", "--root", root, "--shards", "0", "--known", "--checksums", str(mirror_list)
    )
    shard = by_name(report)[GOOD]
    assert code == 0 and shard["status"] == "ok" and "md5=community" in shard["checks"]
    assert any("community list" in w for w in shard["warnings"])
