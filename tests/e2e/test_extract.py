"""End to end: extract and download --extract through the installed command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
        "sa_000002.tar": "missing",
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


@pytest.mark.parametrize("delay", [0.3, 0.5, 0.8])
def test_kill_9_during_extraction_never_leaves_a_half_shard_marked_done(tmp_path: Path, delay):
    import signal
    import tarfile
    import time

    from tests.site import build_site

    site = build_site(tmp_path, shards=3, images=250)  # ~1,500 files: the kill lands mid-way
    try:
        links, root = str(site.manifest()), str(site.root)
        assert site.run("download", "--links", links, "--root", root).returncode == 0
    finally:
        site.mirror.stop()
    proc = site.popen("extract", "--root", root, "--jobs", "1", "--quiet")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    out = site.root / "extracted"

    def expected(name: str) -> dict[str, bytes]:
        with tarfile.open(site.root / "tars" / name) as tar:
            return {
                m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }

    def check_marked() -> int:
        marked = 0
        for k in range(3):
            name = f"sa_{k:06d}.tar"
            if (out / ".done" / f"sa_{k:06d}.json").exists():
                marked += 1
                files = {p.name: p.read_bytes() for p in (out / f"sa_{k:06d}").iterdir()}
                assert files == expected(name), f"{name} is marked done but incomplete"
        return marked

    check_marked()
    done = site.run("extract", "--root", root, "--jobs", "1")
    assert done.returncode == 0, done.stderr
    assert check_marked() == 3
    assert not list(out.glob(".tmp-*"))


def test_a_folder_of_only_images_gets_its_annotations_when_asked_for_all(site: Site):
    links, root = str(site.manifest()), str(site.root)
    out = site.root / "out" / "x"
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    common = ("extract", "--root", root, "--layout", "flat", "--out", str(out))
    code, _ = site.run_json(*common, "--only", "images")
    assert code == 0 and not list(out.glob("*.json"))
    code, report = site.run_json(*common)
    assert code == 0, report
    assert {s["status"] for s in report["shards"]} == {"extracted"}
    assert len(list(out.glob("sa_*.json"))) == len(list(out.glob("sa_*.jpg"))) == 18
    code, report = site.run_json(*common, "--only", "images")  # all of it holds the images
    assert code == 0 and {s["status"] for s in report["shards"]} == {"present"}


def test_a_folder_of_one_layout_refuses_another(site: Site):
    links, root = str(site.manifest()), str(site.root)
    out = site.root / "out" / "webdataset"
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    assert (
        site.run("extract", "--root", root, "--layout", "webdataset", "--out", str(out)).returncode
        == 0
    )
    before = sorted(p.name for p in out.iterdir())
    done = site.run("extract", "--root", root, "--layout", "shard", "--out", str(out))
    assert done.returncode == 2
    assert f"error: {out} holds the webdataset layout" in done.stderr
    assert "--out another folder" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_download_extract_into_a_folder_of_another_layout_fetches_nothing(site: Site):
    links, root = str(site.manifest()), str(site.root)
    out = site.root / "out" / "split"
    assert site.run("download", "--links", links, "--root", root, "--subset", "1").returncode == 0
    assert (
        site.run("extract", "--root", root, "--layout", "split", "--out", str(out)).returncode == 0
    )
    before = len(site.mirror.requests)
    done = site.run("download", "--links", links, "--root", root, "--extract", "--out", str(out))
    assert done.returncode == 2 and "holds the split layout" in done.stderr
    assert len(site.mirror.requests) == before


def _link_out(target: Path, elsewhere: Path) -> None:
    target.symlink_to(elsewhere, target_is_directory=True)


PLANTED = [  # (layout, where in <out>, what is planted, the kind said)
    ("shard", "sa_000000", _link_out, "a symbolic link"),
    ("shard", "sa_000000", lambda t, e: t.write_text("x"), "a file"),
    ("split", "annotations/sa_000000", _link_out, "a symbolic link"),
    ("webdataset", "sa_000000.tar", lambda t, e: t.mkdir(), "a directory"),
]


@pytest.mark.parametrize(
    ("layout", "where", "plant", "what"), PLANTED, ids=[f"{p[0]}:{p[3]}" for p in PLANTED]
)
def test_something_planted_where_a_shard_goes_fails_that_shard_only(
    site: Site, tmp_path: Path, layout: str, where: str, plant: Any, what: str
):
    root, out = str(site.root), tmp_path / "data"
    links = str(site.manifest())
    assert site.run("download", "--links", links, "--root", root, "--subset", "2").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / where).parent.mkdir(parents=True)
    plant(out / where, elsewhere)
    args = ("extract", "--root", root, "--subset", "2", "--layout", layout, "--out", str(out))
    code, report = site.run_json(*args)
    assert code == 1
    shards = {s["name"]: s for s in report["shards"]}
    assert shards["sa_000001.tar"]["status"] == "extracted"
    assert shards["sa_000000.tar"]["status"] == "in_the_way"
    assert f"is {what}, which sa1b never makes" in shards["sa_000000.tar"]["detail"]
    assert list(elsewhere.iterdir()) == []  # nothing written through a link, nothing removed
    planted = out / where
    if planted.is_dir() and not planted.is_symlink():
        planted.rmdir()
    else:
        planted.unlink()
    code, report = site.run_json(*args)
    assert code == 0 and shards.keys() == {s["name"] for s in report["shards"]}


def _long_line(path: Path) -> None:
    with path.open("ab") as index:  # 64 MiB without a newline: a read by lines holds it whole
        index.write(b"9" * (64 << 20))


def _replaced(how: str) -> Any:
    def replace(path: Path) -> None:
        path.unlink()
        if how == "pipe":
            os.mkfifo(path)
        elif how == "link":
            path.symlink_to("/dev/zero")
        else:
            path.mkdir()

    return replace


DAMAGED_INDEX = {  # shard 0's own index, as something other than sa1b left it
    "bad UTF-8": lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe,1,2\n"),
    "NUL bytes": lambda p: p.write_bytes(bytes(4096)),
    "escapes in a row": lambda p: p.write_bytes(p.read_bytes() + b"7,\x1b[2J,1,1,1,1\n"),
    "a line of 64 MiB": _long_line,
    "a named pipe": _replaced("pipe"),
    "a link to /dev/zero": _replaced("link"),
    "a folder": _replaced("folder"),
}


@pytest.mark.parametrize("how", list(DAMAGED_INDEX))
def test_a_damaged_shard_index_loses_only_its_bad_rows(site: Site, tmp_path: Path, how: str):
    """UTF-8 errors there ended extract and show in "unexpected error"; a pipe or a long line
    blocked them or was read whole. Rows that are six whole numbers are all that is kept."""
    root, out = str(site.root), tmp_path / "data"
    links = str(site.manifest())
    assert site.run("download", "--links", links, "--root", root, "--subset", "2").returncode == 0
    assert site.run("extract", "--root", root, "--subset", "2", "--out", str(out)).returncode == 0
    index = out / "index" / "sa_000000.csv"
    good = index.read_text().splitlines()[1:]
    DAMAGED_INDEX[how](index)
    done = site.run("extract", "--root", root, "--shards", "1", "--out", str(out), timeout=60)
    assert done.returncode == 0, done.stderr
    rows = (out / "index.csv").read_bytes().decode("ascii").splitlines()[1:]
    ours = [r.split(",", 1)[1] for r in rows if r.startswith("sa_000000,")]
    assert ours == (
        [] if how in ("NUL bytes", "a named pipe", "a link to /dev/zero", "a folder") else good
    )
    assert any(r.startswith("sa_000001,") for r in rows)
    assert all(r.count(",") == 6 for r in rows), rows[-3:]
    image = rows[-1].split(",")[1]  # shard 1's: its own index is whole
    shown = site.run("show", image, "--root", root, "--out", str(out), "--json", timeout=60)
    assert shown.returncode == 0, shown.stderr
    for text in (done.stdout + done.stderr, shown.stderr):
        assert "Traceback" not in text and "unexpected" not in text and "\x1b" not in text


BAD_MARKERS = {  # shard 0's marker with fields no sa1b wrote (each read once ended the run)
    "no nsamples": {"layout": "webdataset", "filesize": 1},
    "counts not numbers": {"layout": "webdataset", "nsamples": "\x1b[2J", "filesize": [1]},
    "a count below zero": {"layout": "webdataset", "nsamples": -1, "filesize": 10},
    "only as a list": {"layout": "shard", "only": ["images"]},
    "only with escapes": {"only": "\x1b[2Jimages"},
}


@pytest.mark.parametrize("layout", ["webdataset", "shard"])
@pytest.mark.parametrize("body", list(BAD_MARKERS))
def test_a_marker_sa1b_never_wrote_counts_as_not_extracted(
    site: Site, tmp_path: Path, body: str, layout: str
):
    root, out = str(site.root), tmp_path / "data"
    links = str(site.manifest())
    assert site.run("download", "--links", links, "--root", root, "--subset", "2").returncode == 0
    args = ("extract", "--root", root, "--layout", layout, "--out", str(out))
    assert site.run(*args, "--shards", "0").returncode == 0
    (out / ".done" / "sa_000000.json").write_text(json.dumps(BAD_MARKERS[body]))
    done = site.run(*args, "--shards", "1")  # the lists are rebuilt from every marker
    assert done.returncode == 0, done.stderr
    code, report = site.run_json(*args, "--shards", "0,1")
    assert code == 0, report
    assert [s["status"] for s in report["shards"]] == ["extracted", "present"]
    if layout == "webdataset":
        wids = json.loads((out / "wids-index.json").read_text())
        assert [type(s["nsamples"]) for s in wids["shardlist"]] == [int, int]
    shown = site.run("show", "2", "--root", root, "--out", str(out), "--json")
    assert shown.returncode == 0, shown.stderr
    for text in (done.stdout + done.stderr, shown.stdout + shown.stderr):
        assert "Traceback" not in text and "unexpected" not in text and "\x1b" not in text
