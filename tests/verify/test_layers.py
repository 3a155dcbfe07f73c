"""verify: each level, each kind of damage, valid oddities, lists in every format, export."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from sa1b_cli.core.content import check_batch as REAL_CHECK_BATCH
from sa1b_cli.core.selection import Selection
from sa1b_cli.core.store import Store
from sa1b_cli.verify.config import VerifyConfig
from sa1b_cli.verify.layers import VerifyResult, verify_shards
from tests.shards import W, edit_json, good_pair, install, tar_bytes

NAME = "sa_000000.tar"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "root").ensure()


def run(store: Store, *, deep: bool = False, checksums: tuple[str, ...] = (), **kw) -> VerifyResult:
    config = VerifyConfig(store.root, Selection((NAME,)), checksums, deep=deep, jobs=1, **kw)
    (result,) = verify_shards(config).results
    return result


def good_shard() -> bytes:
    return tar_bytes(good_pair(1) + good_pair(2))


@pytest.mark.parametrize("deep", [False, True])
def test_good_shard_passes(store, deep):
    install(store, NAME, good_shard())
    result = run(store, deep=deep)
    assert result.status == "ok", result.detail
    assert "xxh128=record" in result.checks
    if deep:
        assert result.images == 2 and result.masks == 6


@pytest.mark.parametrize("deep", [False, True])
def test_flipped_bit_is_a_digest_mismatch_and_marks_the_shard_bad(store, deep):
    path = install(store, NAME, good_shard())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    result = run(store, deep=deep)
    assert result.status == "digest_mismatch"
    assert store.read(NAME).status == "bad"  # type: ignore[union-attr]


def test_truncated_file_is_a_size_mismatch(store):
    path = install(store, NAME, good_shard())
    path.write_bytes(path.read_bytes()[:-100])
    assert run(store).status == "size_mismatch"


def test_missing_and_partial(store):
    assert run(store).status == "missing"
    store.part_path(NAME).write_bytes(b"x")
    assert run(store).status == "partial"


def pair_with(image_id: int, change) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
    jpg, ann = good_pair(image_id)
    return [jpg, (ann[0], edit_json(ann[1], change))]


def set_counts(doc):  # type: ignore[no-untyped-def]
    doc["annotations"][0]["segmentation"]["counts"] = "ZZZZ!!"


def bump_area(doc):  # type: ignore[no-untyped-def]
    doc["annotations"][1]["area"] += 1


def wrong_width(doc):  # type: ignore[no-untyped-def]
    doc["image"]["width"] = 97
    for ann in doc["annotations"]:
        ann["segmentation"]["size"] = [64, 97]


def wrong_id(doc):  # type: ignore[no-untyped-def]
    doc["image"]["image_id"] = 99


BROKEN_ANNOTATIONS = {
    "undecodable RLE": pair_with(1, set_counts),
    "area mismatch": pair_with(1, bump_area),
    "image size mismatch": pair_with(1, wrong_width),
    "image_id mismatch": pair_with(1, wrong_id),
    "missing pair": good_pair(1)[:1],
    "bad JSON": [good_pair(1)[0], ("./sa_1.json", b'{"image": {"image_id": 1,')],
    "schema": [good_pair(1)[0], ("./sa_1.json", b'{"images": []}')],
}


@pytest.mark.parametrize("kind", list(BROKEN_ANNOTATIONS))
def test_broken_annotations(store, kind):
    install(store, NAME, tar_bytes(BROKEN_ANNOTATIONS[kind] + good_pair(2)))
    result = run(store, deep=True)
    assert result.status == "bad_annotation", (kind, result.detail)
    assert "sa_1" in (result.detail or "")
    assert run(store, deep=False).status == "ok"  # only the content check can see it


def unsafe(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


BROKEN_ARCHIVES = {
    "truncated gzip": good_shard()[:-200],
    "not an archive": b"\x1f\x8b" + b"garbage" * 100,
    "plain garbage": b"hello world" * 100,
    "symlink": tar_bytes([*good_pair(1), unsafe("./sa_2.jpg", tarfile.SYMTYPE, "/etc/passwd")]),
    "hard link": tar_bytes([*good_pair(1), unsafe("./sa_2.jpg", tarfile.LNKTYPE, "sa_1.jpg")]),
    "device": tar_bytes([*good_pair(1), unsafe("./sa_2.jpg", tarfile.CHRTYPE)]),
    "dotdot": tar_bytes([*good_pair(1), ("../sa_2.jpg", b"x")]),
    "absolute": tar_bytes([*good_pair(1), ("/tmp/sa_2.jpg", b"x")]),
}


@pytest.mark.parametrize("kind", list(BROKEN_ARCHIVES))
def test_broken_archives(store, kind):
    install(store, NAME, BROKEN_ARCHIVES[kind])
    result = run(store, deep=True)
    assert result.status == "corrupt_archive", (kind, result.detail)


def test_unusual_but_valid_data_passes_with_warnings(store):
    no_masks = pair_with(3, lambda d: d.update(annotations=[]))
    no_optional = pair_with(4, lambda d: [a.pop("predicted_iou") for a in d["annotations"]])
    other_size = good_pair(5, w=120, h=80)
    data = tar_bytes(
        good_pair(1) + no_masks + no_optional + other_size + [("./README", b"hi")], gzip=False
    )
    install(store, NAME, data)
    result = run(store, deep=True)
    assert result.status == "ok", result.detail
    assert result.warnings["image without masks"] == 1
    assert result.warnings["annotation without predicted_iou"] == 3
    assert any("unexpected member" in w for w in result.warnings)


def test_full_mask_decode_is_available(store):
    install(store, NAME, good_shard())
    assert run(store, deep=True, decode_masks=True).status == "ok"


def write_list(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("style", ["md5sum", "sha256sum", "bsd", "xxh128"])
def test_lists_in_each_format_without_a_record(store, tmp_path, style):
    data = good_shard()
    install(store, NAME, data, record=False)
    md5, sha = hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
    import xxhash

    text = {
        "md5sum": f"{md5}  {NAME}\n",
        "sha256sum": f"{sha} *{NAME}\n",
        "bsd": f"MD5 ({NAME}) = {md5}\n",
        "xxh128": f"{xxhash.xxh3_128(data).hexdigest()}  {NAME}\n",
    }[style]
    good = write_list(tmp_path, f"good.{style}", text)
    result = run(store, checksums=(good,))
    assert result.status == "ok", result.detail
    assert store.read(NAME).status == "complete"  # type: ignore[union-attr]  # adopted
    wrong = write_list(
        tmp_path,
        f"wrong.{style}",
        text.replace(text[:6], "000000", 1) if style != "bsd" else text.replace(md5, "0" * 32),
    )
    assert run(store, checksums=(wrong,)).status == "digest_mismatch"


def test_hand_placed_tars_are_adopted_from_a_list(tmp_path):
    data = good_shard()
    tars = tmp_path / "bare" / "tars"
    tars.mkdir(parents=True)
    (tars / NAME).write_bytes(data)
    listing = write_list(tmp_path, "l.md5", f"{hashlib.md5(data).hexdigest()}  {NAME}\n")
    store = Store(tmp_path / "bare")
    assert run(store, checksums=(listing,)).status == "ok"
    assert store.read(NAME).status == "complete"  # type: ignore[union-attr]


def test_list_without_the_shard_is_not_covered_not_failed(store, tmp_path):
    install(store, NAME, good_shard())
    other = write_list(tmp_path, "l.md5", f"{'0' * 32}  sa_000005.tar\n")
    result = run(store, checksums=(other,))
    assert result.status == "not_covered" and result.ok


@pytest.mark.parametrize(
    ("algo", "tool"), [("md5", "md5sum"), ("sha256", "sha256sum"), ("xxh128", "xxhsum")]
)
def test_export_is_accepted_by_the_standard_tool(store, tmp_path, algo, tool):
    install(store, NAME, good_shard())
    target = tmp_path / f"out.{algo}"
    run(store, export=target, export_algo=algo)
    assert target.read_text().count("\n") == 1
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    check = subprocess.run(
        [tool, "-c", str(target)], cwd=store.tars, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _dies_on_image_2(items, decode):  # run in a worker process (forked with the patch)
    import os

    if any(item.image_id == 2 for item in items):
        os._exit(3)  # as a crash in a decoder would
    return REAL_CHECK_BATCH(items, decode)


def test_a_worker_that_dies_fails_its_shard_and_the_next_shard_is_checked(store, monkeypatch):
    from sa1b_cli.core import content

    monkeypatch.setattr(content, "check_batch", _dies_on_image_2)
    install(store, NAME, good_shard())
    install(store, "sa_000001.tar", tar_bytes(good_pair(11187)))
    config = VerifyConfig(store.root, Selection((NAME, "sa_000001.tar")), (), deep=True, jobs=1)
    first, second = verify_shards(config).results
    assert first.status == "corrupt_archive" and "worker" in (first.detail or "")
    assert second.status == "ok", second.detail


def _wider_jpeg(image_id: int) -> tuple[str, bytes]:
    return good_pair(image_id, w=W + 8)[0]


PAIRINGS = [  # members in the order a shard holds them, and the problem said
    ("annotation, then a JPEG of another size", [good_pair(1)[1], _wider_jpeg(1)], "JPEG is"),
    ("a JPEG of another size, then its annotation", [_wider_jpeg(1), good_pair(1)[1]], "JPEG is"),
    ("annotation, then no JPEG header", [good_pair(1)[1], ("./sa_1.jpg", b"x")], "unreadable"),
    ("an annotation alone", [good_pair(1)[1]], "sa_1.json has no sa_1.jpg"),
    ("a JPEG alone", [good_pair(1)[0]], "sa_1.jpg has no sa_1.json"),
]


@pytest.mark.parametrize(
    ("members", "says"), [p[1:] for p in PAIRINGS], ids=[p[0] for p in PAIRINGS]
)
def test_deep_pairs_each_annotation_with_its_jpeg_in_either_order(store, members, says):
    """An annotation is checked as soon as it is read; its JPEG's size is compared at the end."""
    install(store, NAME, tar_bytes([*members, *good_pair(2)]))
    result = run(store, deep=True)
    assert result.status == "bad_annotation" and says in (result.detail or ""), result.detail
    assert result.images == len(members) and "sa_2" not in (result.detail or "")  # pairs whole
