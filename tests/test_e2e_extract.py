"""End to end: extract and download --extract through the installed command."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.site import Site

pytestmark = pytest.mark.slow


def test_extract_subset_reports_missing_shards_and_extracts_the_rest(site: Site):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--subset", "2").returncode == 0
    code, report = site.run_json("extract", "--root", root, "--subset", "3")
    assert code == 1
    statuses = {s["name"]: s["status"] for s in report["shards"]}
    assert statuses == {
        "sa_000000.tar": "extracted",
        "sa_000001.tar": "extracted",
        "sa_000002.tar": "not_downloaded",
    }
    assert len(list((site.root / "extracted" / "sa_000001").glob("*.jpg"))) == 6
    code, report = site.run_json("extract", "--root", root, "--subset", "2")
    assert code == 0 and {s["status"] for s in report["shards"]} == {"present"}


def test_download_extract_pipeline_with_delete_tar(site: Site, tmp_path: Path):
    links, root, out = str(site.manifest()), str(site.root), tmp_path / "data"
    code, report = site.run_json(
        "download",
        "--links",
        links,
        "--root",
        root,
        "--extract",
        "--layout",
        "split",
        "--out",
        str(out),
        "--delete-tar",
    )
    assert code == 0, report
    assert {s["status"] for s in report["extract"]["shards"]} == {"extracted"}
    assert len(report["extract"]["shards"]) == 3
    for k in range(3):
        assert len(list((out / "images" / f"sa_{k:06d}").glob("*.jpg"))) == 6
    assert not list((site.root / "tars").glob("*.tar"))
    before = len(site.mirror.requests)
    code, report = site.run_json("download", "--links", links, "--root", root)
    assert code == 0 and len(site.mirror.requests) == before  # deleted tars are not refetched
