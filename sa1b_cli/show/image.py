"""``sa1b show``: one image with its masks drawn over it, from an extracted layout or a tar.

The image is found through the per-shard indexes of the output (never by listing folders),
then read from wherever its layout put it; with ``shard`` given and nothing extracted, the
shard's tar is read until both of its members have passed. Masks are decoded by
pycocotools and drawn largest first (small ones stay visible on top), a random colour each
at alpha 0.4, with optional outlines.
"""

from __future__ import annotations

import math
import random
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sa1b_cli.core.annotation import BadAnnotation, check_masks, image_fields, load_annotation
from sa1b_cli.core.archive import (
    MAX_MEMBER,
    MAX_MEMBERS,
    ArchiveError,
    Refusal,
    iter_members,
    member_id,
    open_shard,
    open_tar,
)
from sa1b_cli.core.errors import ImageNotFoundError, UsageError
from sa1b_cli.core.files import open_own, read_at_most
from sa1b_cli.core.layouts import Layout, shard_dirs
from sa1b_cli.core.markers import INDEX_GLOB, index_rows, marked_layout, read_marker, stem
from sa1b_cli.core.store import Store
from sa1b_cli.core.text import shown

__all__ = ["ShowConfig", "ShowResult", "find_image", "parse_image_id", "show_image"]

ALPHA = 0.4


@dataclass(frozen=True, slots=True)
class ShowConfig:
    root: Path
    image_id: int
    out: Path  # where extracted layouts live
    shard: str | None = None  # "sa_000000.tar"
    output: Path | None = None  # the PNG; None: sa_<id>-masks.png in the current folder
    outlines: bool = False
    seed: int = 0
    draw: bool = True  # False: the mask statistics only (--json)


@dataclass(slots=True)
class ShowResult:
    image_id: int
    shard: str
    source: str  # where the pair was read: a folder, or a tar
    width: int
    height: int
    masks: list[dict[str, Any]] = field(default_factory=list)
    png: Path | None = None


def parse_image_id(text: str) -> int:
    """``123``, ``sa_123``, ``sa_123.jpg`` -> 123."""
    match = re.fullmatch(r"\s*(?:sa_)?(\d+)(?:\.(?:jpg|json))?\s*", text)
    if not match:
        msg = f"{text!r} is not an image id"
        raise UsageError(msg, hint="Give the number of sa_<id>.jpg, for example 1 or sa_1.")
    return int(match.group(1))


def _indexed_shard(out: Path, image_id: int, shard: str | None) -> str | None:
    """The extracted shard whose index lists the id (one small CSV per shard)."""
    folder = out / "index"
    names = [f"{stem(shard)}.csv"] if shard else sorted(p.name for p in folder.glob(INDEX_GLOB))
    prefix = f"{image_id},"
    for csv_name in names:
        if any(row.startswith(prefix) for row in index_rows(folder / csv_name)):
            return f"{Path(csv_name).stem}.tar"
    return None


def _from_layout(out: Path, shard: str, image_id: int) -> tuple[bytes, bytes, str] | None:
    marker = read_marker(out, shard)
    if marker is None or marker.get("only"):
        return None  # not extracted, or without one of the two files
    layout = marked_layout(marker)
    if layout is None:
        return None  # a marker this version cannot read: not a layout it knows
    if layout is Layout.WEBDATASET:
        return _from_webdataset(out / shard, shard, image_id)
    dirs = shard_dirs(out, shard, layout, None)  # where extraction put them
    pair = []
    for kind in ("jpg", "json"):
        path = dirs[kind] / f"sa_{image_id}.{kind}"
        try:  # a file sa1b wrote: a pipe, a link to /dev/zero or a folder there is not one
            pair.append(read_at_most(path, MAX_MEMBER, own=True))
        except OSError as exc:
            raise _unreadable(image_id, shard, path, exc.strerror or str(exc)) from exc
    return pair[0], pair[1], str(dirs["jpg"])


def _from_webdataset(path: Path, shard: str, image_id: int) -> tuple[bytes, bytes, str] | None:
    slots = {f"sa_{image_id}.jpg": 0, f"sa_{image_id}.json": 1}
    pair: list[bytes | None] = [None, None]
    try:
        with open_own(path) as raw, open_tar(raw, "r:") as tar:
            for _ in range(MAX_MEMBERS):
                info = tar.next()
                if info is None:
                    return None  # indexed, but not in the tar: said as not found
                tar.members = []  # type: ignore[attr-defined]  # keep no headers
                slot = slots.get(info.name)
                if slot is None:
                    continue
                if not info.isfile() or info.size > MAX_MEMBER:
                    msg = f"its {shown(info.name)} is not a file sa1b wrote"
                    raise tarfile.TarError(msg)
                pair[slot] = tar.extractfile(info).read()  # type: ignore[union-attr]
                if pair[0] is not None and pair[1] is not None:
                    return pair[0], pair[1], str(path)
    except (OSError, tarfile.TarError) as exc:
        raise _unreadable(image_id, shard, path, str(exc)) from exc
    raise _unreadable(image_id, shard, path, f"it has more than {MAX_MEMBERS:,} members")


def _unreadable(image_id: int, shard: str, path: Path, why: str) -> ImageNotFoundError:
    msg = f"sa_{image_id} is indexed in {shard}, but {shown(str(path))} cannot be read: {why}"
    hint = f"Read it from the tar with --shard {stem(shard)}, or extract it into a new --out."
    return ImageNotFoundError(msg, hint=hint)


def _from_tar(tar: Path, image_id: int) -> tuple[bytes, bytes, str] | None:
    found: dict[str, bytes] = {}
    with open_shard(tar) as (stream, _):
        for item in iter_members(stream):
            parsed = None if isinstance(item, Refusal) else member_id(item.name)
            if parsed is not None and parsed[0] == image_id and not isinstance(item, Refusal):
                found[parsed[1]] = item.data
                if len(found) == 2:
                    return found["jpg"], found["json"], str(tar)
    return None


def find_image(config: ShowConfig) -> tuple[str, bytes, bytes, str]:
    """(shard, jpg, json, where) for the image; raises ImageNotFoundError with the next step."""
    shard = _indexed_shard(config.out, config.image_id, config.shard)
    unreadable = None
    try:
        if shard is not None and (pair := _from_layout(config.out, shard, config.image_id)):
            return (shard, *pair)
    except ImageNotFoundError as exc:
        if config.shard is None:
            raise
        unreadable = exc  # the tar named with --shard may still have it
    if config.shard is not None:
        tar = Store(config.root).final_path(config.shard)
        if tar.is_file():
            try:
                pair = _from_tar(tar, config.image_id)
            except ArchiveError as exc:
                msg = f"{config.shard} cannot be read: {exc}"
                raise ImageNotFoundError(msg, hint="Run sa1b verify --deep on it.") from exc
            if pair is not None:
                return (config.shard, *pair)
    raise unreadable or _not_found(config, shard)


def _not_found(config: ShowConfig, indexed: str | None) -> ImageNotFoundError:
    """Why the pair was not found, and the next step that fits what was asked."""
    image = f"sa_{config.image_id}"
    marker = read_marker(config.out, indexed) if indexed else None
    if indexed and marker and marker.get("only"):
        kept = shown(str(marker["only"]), 20)
        msg = f"{image} is in {indexed}, but this output has only its {kept}"
        hint = (
            f"Read it from the tar with --shard {stem(indexed)}, or extract without --only "
            "into another --out."
        )
        return ImageNotFoundError(msg, hint=hint)
    if config.shard is not None:
        msg = f"{image} is not in {config.shard}"
        hint = "Leave --shard out to look in every extracted shard, or name the shard it is in."
        return ImageNotFoundError(msg, hint=hint)
    msg = f"{image} is not in any extracted shard under {config.out}"
    hint = (
        "Name its shard (for example --shard 0) to read it from the downloaded tar, "
        "or extract that shard first (sa1b extract --shards 0)."
    )
    return ImageNotFoundError(msg, hint=hint)


def _mask_stats(annotations: list[Any]) -> list[dict[str, Any]]:
    keys = ("id", "area", "predicted_iou", "stability_score", "bbox")
    return [{k: _stat(ann.get(k)) for k in keys} for ann in annotations]


def _stat(value: Any) -> Any:
    """A number, or a short list of them (a box), as --json can print it; else null.

    1e999 in an annotation parses as inf, which is not JSON, and a list nested a thousand
    deep would take the printer past Python's stack.
    """
    if isinstance(value, list) and len(value) <= 8 and all(map(_finite, value)):
        return value
    return value if _finite(value) else None


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)  # never inf, however long


def _decoded(jpg: bytes, image_id: int, shard: str, size: tuple[int, int]) -> Any:
    """The JPEG as an RGB image, if it is one of the size its annotation says (checked first)."""
    import io

    from PIL import Image, UnidentifiedImageError

    where = f"sa_{image_id}.jpg in {shard}"
    hint = "Run sa1b verify --deep on that shard."
    try:
        image = Image.open(io.BytesIO(jpg))
        if image.size != size:  # before decoding: the header's size is all that is read yet
            (w, h), (aw, ah) = image.size, size
            msg = f"{where} is {w}x{h}, its annotation says {aw}x{ah}"
            raise ImageNotFoundError(msg, hint=hint)
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        msg = f"{where} is not a readable JPEG"
        raise ImageNotFoundError(msg, hint=hint) from exc


def _draw(rgb: Any, annotations: list[Any], config: ShowConfig, target: Path) -> None:
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    image = np.asarray(rgb).astype(np.float32)
    rng = random.Random(config.seed)
    for ann in sorted(annotations, key=lambda a: -int(a.get("area", 0))):  # largest first
        seg = ann["segmentation"]
        if seg["size"] != list(image.shape[:2]):
            continue  # a mask of another size cannot be laid over this image: never decoded
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
        with warnings.catch_warnings():  # pycocotools' numpy-2 __array__ deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = mask_utils.decode(rle).astype(bool)
        colour = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
        image[mask] = image[mask] * (1 - ALPHA) + colour * ALPHA
        if config.outlines:
            inner = mask.copy()
            inner[1:, :] &= mask[:-1, :]
            inner[:-1, :] &= mask[1:, :]
            inner[:, 1:] &= mask[:, :-1]
            inner[:, :-1] &= mask[:, 1:]
            image[mask & ~inner] = colour
    Image.fromarray(image.round().clip(0, 255).astype(np.uint8)).save(target, format="PNG")


def show_image(config: ShowConfig) -> ShowResult:
    """Find the image, collect its mask statistics and (unless told not to) draw the PNG."""
    shard, jpg, raw, where = find_image(config)
    try:
        doc = load_annotation(raw)
        _, width, height = image_fields(doc)
        check_masks(doc)
    except BadAnnotation as exc:
        msg = f"sa_{config.image_id}.json in {shard} {exc}"
        raise ImageNotFoundError(msg, hint="Run sa1b verify --deep on that shard.") from exc
    annotations = doc["annotations"]
    result = ShowResult(config.image_id, shard, where, width, height)
    result.masks = _mask_stats(annotations)
    if config.draw:
        target = config.output or Path(f"sa_{config.image_id}-masks.png")
        _draw(_decoded(jpg, config.image_id, shard, (width, height)), annotations, config, target)
        result.png = target
    return result
