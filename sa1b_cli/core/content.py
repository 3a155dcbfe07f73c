"""Content checks for one image and its annotation: certain corruption vs. mere oddities.

Shared by verify --deep (in worker processes) and extract --salvage. Errors are things
no good copy can have (JSON that does not parse, an RLE whose pixel count differs from
``area``, a JPEG whose size differs from the JSON); warnings are what real data shows.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

from sa1b_cli.core.annotation import (
    BadAnnotation,
    image_fields,
    load_annotation,
    mask_size_problem,
)
from sa1b_cli.core.text import shown

__all__ = [
    "AnnotationInput",
    "ImageCheck",
    "check_annotation",
    "check_batch",
    "jpeg_problem",
    "jpeg_size",
]

_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


@dataclass(frozen=True, slots=True)
class AnnotationInput:
    """One sa_<id>.json to check, as soon as it is read: its JPEG may come much later, and
    holding annotations for their JPEGs took a real-sized shard's check to 550 MB."""

    image_id: int
    annotation: bytes


@dataclass(slots=True)
class ImageCheck:
    image_id: int
    errors: list[str] = field(default_factory=list)
    warnings: Counter[str] = field(default_factory=Counter)
    masks: int = 0
    size: tuple[int, int] | None = None  # (width, height) the annotation says, once read


@cache
def _mask_utils() -> ModuleType:
    # pycocotools pulls in numpy (~60 ms): only deep verification should pay for it.
    import importlib

    return importlib.import_module("pycocotools.mask")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF segment; None when the header is unreadable."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS and pos + 9 <= len(data):
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        if marker in (0xD9, 0xDA) or length < 2:
            return None
        pos += 2 + length
    return None


def jpeg_problem(jpeg: tuple[int, int] | None, said: tuple[int, int]) -> str | None:
    """The JPEG's size (from its header) against the one its annotation says."""
    if jpeg is None:
        return "the JPEG header is unreadable"
    if jpeg != said:
        return f"JPEG is {jpeg[0]}x{jpeg[1]}, annotation says {said[0]}x{said[1]}"
    return None


def _check_image(check: ImageCheck, doc: dict[str, Any], size: tuple[int, int]) -> None:
    """The image's own fields (shape and limits were checked on loading)."""
    image, image_id = doc["image"], check.image_id
    if image.get("image_id") != image_id:
        check.errors.append(f"image_id {image.get('image_id')!r} in sa_{image_id}.json")
    if image.get("file_name") != f"sa_{image_id}.jpg":
        check.errors.append(f"file_name {image.get('file_name')!r} in sa_{image_id}.json")
    if min(size) != 1500:
        check.warnings["shortest side is not 1500 px"] += 1


def _rle_of(check: ImageCheck, ann: Any, size: tuple[int, int]) -> dict[str, Any] | None:
    """The annotation's RLE in pycocotools form, or None (with an error) when it has none."""
    width, height = size
    seg = ann.get("segmentation") if isinstance(ann, dict) else None
    if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str):
        check.errors.append(f"annotation {ann.get('id') if isinstance(ann, dict) else '?'}: no RLE")
        return None
    declared = seg.get("size")
    if (problem := mask_size_problem(declared)) is not None:  # never to the decoder
        check.errors.append(f"annotation {shown(str(ann.get('id')), 20)}: {problem}")
        return None
    if declared != [height, width]:
        check.warnings["mask size differs from the image size"] += 1
    for key in ("bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"):
        if key not in ann:
            check.warnings[f"annotation without {key}"] += 1
    return {"size": declared, "counts": seg["counts"].encode("ascii", "replace")}


# pycocotools' area() builds a uint8 array of the mask count on its way: numpy 2 refuses
# one past 255 (OverflowError), and images with more masks went with theirs unchecked.
_AREA_BATCH = 255


def _measure(rles: list[dict[str, Any]], decode: bool) -> tuple[list[int], list[list[float]]]:
    """Pixel counts and boxes, in as few pycocotools calls as ``area()`` allows."""
    mask_utils = _mask_utils()
    areas = [
        int(a)
        for start in range(0, len(rles), _AREA_BATCH)
        for a in mask_utils.area(rles[start : start + _AREA_BATCH])
    ]
    boxes = [[float(v) for v in box] for box in mask_utils.toBbox(rles)]
    if decode:
        with warnings.catch_warnings():  # pycocotools' numpy-2 __array__ deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            for rle in rles:  # one at a time: all at once would need every mask in memory
                mask_utils.decode(rle)  # checks that the runs cover exactly height x width
    return areas, boxes


def _check_masks(
    check: ImageCheck, annotations: list[Any], size: tuple[int, int], decode: bool
) -> None:
    pairs = [(ann, rle) for ann in annotations if (rle := _rle_of(check, ann, size)) is not None]
    if not pairs:
        return
    try:
        areas, boxes = _measure([rle for _, rle in pairs], decode)
    except (ValueError, TypeError, OverflowError):
        for ann, rle in pairs:  # find which ones are broken
            try:
                _measure([rle], decode)
            except (ValueError, TypeError, OverflowError) as exc:
                check.errors.append(f"annotation {ann.get('id')}: RLE does not decode ({exc})")
        return
    for (ann, rle), area, (x, y, w, h) in zip(pairs, areas, boxes, strict=True):
        height, width = rle["size"]
        if x + w > width or y + h > height:
            check.errors.append(
                f"annotation {ann.get('id')}: RLE runs past a {height}x{width} mask"
            )
        if ann.get("area") != area:
            check.errors.append(
                f"annotation {ann.get('id')}: area {ann.get('area')!r}, RLE has {area} pixels"
            )


def check_annotation(item: AnnotationInput, *, decode: bool = False) -> ImageCheck:
    """Everything but the JPEG's size, which ``jpeg_problem`` compares with ``check.size``."""
    check = ImageCheck(item.image_id)
    try:
        doc = load_annotation(item.annotation)
        _, width, height = image_fields(doc)
    except BadAnnotation as exc:
        check.errors.append(f"sa_{item.image_id}.json {exc}")
        return check
    check.size = (width, height)
    _check_image(check, doc, check.size)
    annotations = doc["annotations"]
    if not annotations:
        check.warnings["image without masks"] += 1
    _check_masks(check, annotations, check.size, decode)
    check.masks = len(annotations)
    return check


def check_batch(items: list[AnnotationInput], decode: bool) -> list[ImageCheck]:
    """Worker-process entry point: a batch keeps pickling overhead small."""
    return [check_annotation(item, decode=decode) for item in items]
