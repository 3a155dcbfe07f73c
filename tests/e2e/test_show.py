"""End to end: sa1b show draws the masks over the image, from a tar and from extracted layouts."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.site import Site

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # pycocotools under numpy 2
]
IMAGE_ID = 2  # in sa_000000.tar of the synthetic site


def pair_of(site: Site, image_id: int) -> tuple[np.ndarray, dict]:  # type: ignore[type-arg]
    found: dict[str, bytes] = {}
    with tarfile.open(site.mirror.folder / "sa_000000.tar") as tar:
        for member in tar.getmembers():
            if member.name.endswith((f"/sa_{image_id}.jpg", f"/sa_{image_id}.json")):
                handle = tar.extractfile(member)
                assert handle is not None
                found[member.name.rsplit(".", 1)[1]] = handle.read()
    image = np.asarray(Image.open(io.BytesIO(found["jpg"])).convert("RGB"))
    return image, json.loads(found["json"])


def masks_of(doc: dict) -> list[np.ndarray]:  # type: ignore[type-arg]
    return [
        mask_utils.decode(
            {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        ).astype(bool)
        for a in doc["annotations"]
    ]


def check_overlay(png: Path, site: Site) -> None:
    original, doc = pair_of(site, IMAGE_ID)
    drawn = np.asarray(Image.open(png).convert("RGB"))
    assert drawn.shape == original.shape
    masks = masks_of(doc)
    union = np.logical_or.reduce(masks)
    assert (drawn[~union] == original[~union]).all()  # outside every mask: untouched
    for mask in masks:
        changed = (drawn[mask] != original[mask]).any(axis=1)
        assert changed.mean() > 0.9  # inside each mask: coloured


def test_show_from_the_downloaded_tar(site: Site, tmp_path: Path):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    png = tmp_path / "look.png"
    done = site.run("show", f"sa_{IMAGE_ID}", "--root", root, "--shard", "0", "-o", str(png))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(png)
    check_overlay(png, site)


@pytest.mark.parametrize("layout", ["shard", "images-masks", "webdataset"])
def test_show_from_an_extracted_layout(site: Site, tmp_path: Path, layout: str):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    assert site.run("extract", "--root", root, "--layout", layout).returncode == 0
    (site.root / "tars" / "sa_000000.tar").unlink()  # only the extracted copy is left
    png = tmp_path / "look.png"
    done = site.run("show", str(IMAGE_ID), "--root", root, "-o", str(png), "--outlines")
    assert done.returncode == 0, done.stderr
    check_overlay(png, site)
    code, stats = site.run_json("show", str(IMAGE_ID), "--root", root)
    _, doc = pair_of(site, IMAGE_ID)
    assert code == 0 and stats["count"] == len(doc["annotations"]) == len(stats["masks"])
    assert [m["area"] for m in stats["masks"]] == [a["area"] for a in doc["annotations"]]
    assert all(0 < m["predicted_iou"] <= 1 for m in stats["masks"])


def test_show_explains_what_to_do_when_the_image_is_nowhere(site: Site):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    done = site.run("show", "2", "--root", root)
    assert done.returncode == 1 and "--shard" in done.stderr
    done = site.run("show", "not-an-id", "--root", root)
    assert done.returncode == 2 and "not an image id" in done.stderr


def test_show_hints_fit_what_was_asked(site: Site, tmp_path: Path):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root).returncode == 0
    done = site.run("show", "2", "--root", root, "--shard", "1")  # image 2 is in shard 0
    assert done.returncode == 1 and "sa_2 is not in sa_000001.tar" in done.stderr
    assert "--shard 0" not in done.stderr and "Leave --shard out" in done.stderr
    out = str(tmp_path / "images")
    extract = ("extract", "--root", root, "--out", out, "--only", "images", "--shards", "0")
    assert site.run(*extract).returncode == 0
    done = site.run("show", "2", "--root", root, "--out", out)
    assert done.returncode == 1 and "this output has only its images" in done.stderr
    assert "not in any extracted shard" not in done.stderr and "--shard sa_000000" in done.stderr


def test_unknown_commands_and_options_get_hints_that_fit(site: Site):
    done = site.run("frob")
    assert done.returncode == 2 and "The commands are links, download, verify" in done.stderr
    done = site.run("verify", "--help")
    assert "XuyangShen/SA-1B-Fast-Downloader" in done.stdout and "Meta's CDN" not in done.stdout
    done = site.run("--help")
    assert "sharded layout" not in done.stdout and "one of five layouts" in done.stdout


def _replace(path: Path, how: str) -> None:
    path.unlink()
    if how == "a named pipe":
        os.mkfifo(path)
    elif how == "a link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif how == "a directory":
        path.mkdir()
    elif how == "cut short":
        path.write_bytes(b"\0" * 100)
    elif how == "a 160 MiB long name first":  # tarfile read it whole
        info = tarfile.TarInfo("././@LongLink")
        info.type, info.size = tarfile.GNUTYPE_LONGNAME, 160 << 20
        with path.open("wb") as tar:
            tar.write(info.tobuf(format=tarfile.GNU_FORMAT))
            tar.seek(info.size, os.SEEK_CUR)  # a hole: no disk spent
            tar.write(bytes(1024))


BROKEN = [  # (layout, the file, how it is broken, what the error says)
    ("shard", "sa_000000/sa_2.jpg", "gone", "No such file or directory"),
    ("shard", "sa_000000/sa_2.jpg", "a named pipe", "not a regular file"),
    ("shard", "sa_000000/sa_2.json", "a link to /dev/zero", "a symbolic link"),
    ("images-masks", "masks/sa_2.json", "a directory", "not a regular file"),
    ("webdataset", "sa_000000.tar", "a named pipe", "not a regular file"),
    ("webdataset", "sa_000000.tar", "cut short", "cannot be read"),
    ("webdataset", "sa_000000.tar", "a 160 MiB long name first", "declares 160.0 MiB"),
]


@pytest.mark.parametrize(
    ("layout", "where", "how", "says"), BROKEN, ids=[f"{b[0]}:{b[2]}" for b in BROKEN]
)
def test_show_says_an_extracted_file_it_cannot_read_and_the_way_around(
    site: Site, layout: str, where: str, how: str, says: str
):
    """A pipe there blocked forever, a link to /dev/zero read until memory ran out."""
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--shards", "0").returncode == 0
    out = site.root / "extracted"
    done = site.run("extract", "--root", root, "--layout", layout, "--out", str(out / layout))
    assert done.returncode == 0
    _replace(out / layout / where, how)
    args = ("show", str(IMAGE_ID), "--root", root, "--out", str(out / layout), "--json")
    shown = site.run(*args, timeout=60)
    assert shown.returncode == 1
    assert f"sa_{IMAGE_ID} is indexed in sa_000000.tar, but" in shown.stderr
    assert says in shown.stderr and "--shard sa_000000" in shown.stderr
    assert "Traceback" not in shown.stderr and "unexpected" not in shown.stderr


def test_show_reads_the_named_tar_when_the_extracted_copy_is_broken(site: Site):
    links, root = str(site.manifest()), str(site.root)
    assert site.run("download", "--links", links, "--root", root, "--shards", "0").returncode == 0
    assert site.run("extract", "--root", root).returncode == 0
    (site.root / "extracted" / "sa_000000" / f"sa_{IMAGE_ID}.jpg").unlink()
    code, stats = site.run_json("show", str(IMAGE_ID), "--root", root, "--shard", "0")
    assert code == 0, stats  # the hint's own way round, taken
    _, doc = pair_of(site, IMAGE_ID)
    assert stats["count"] == len(doc["annotations"])
