"""An SA-1B annotation checked before anything decodes it: JSON, nesting, schema, mask sizes.

Every reader of annotations (extract's index, verify --deep, show) goes through here
first, so that a crafted file can fail its shard with a reason in words but can never
crash the process (pycocotools allocates height x width bytes for a mask it decodes and
trusts the size it is given) or recurse without end.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "COUNTED_FROM",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MAX_VALUES",
    "BadAnnotation",
    "check_masks",
    "image_fields",
    "load_annotation",
    "mask_size_problem",
]

# SA-1B images are about 1500 px on the short side (3-5 MP); these leave a wide margin
# and keep one decoded mask (a byte per pixel) at 64 MiB at most.
MAX_SIDE = 16384
MAX_PIXELS = 64 << 20
_LIMITS = f"{MAX_SIDE} px a side, {MAX_PIXELS >> 20} Mi pixels"
# Values one document may hold: an image's ~100 masks take about 25 each (an RLE is one
# string). Bounded before parsing, since 3 bytes of "[]," become a 64-byte list: 42 MiB of
# them took verify --deep to 2.7 GB.
MAX_VALUES = 1 << 20
# Below this many bytes, even 3-byte values parse into under 50 MB, so the count (about
# 1 ms a MiB, more than json.loads itself) is left out: most annotations are far smaller.
COUNTED_FROM = 2 << 20


class BadAnnotation(Exception):
    """The annotation cannot be used; the message says why, in words, without its name."""


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _NotJson(ValueError):
    pass


def _not_json(token: str) -> Any:
    """Python's json reads NaN and Infinity; they are not JSON, and nothing downstream
    (sums, int(), a --json report) can take them."""
    raise _NotJson(token)


def load_annotation(data: bytes) -> dict[str, Any]:
    """The parsed document, with ``image`` an object and ``annotations`` a list."""
    # Every value but the last ends at a comma or opens a container (an over-count at most:
    # no SA-1B string holds a comma or a bracket, and COCO's RLE letters are '0' to 'o').
    values = len(data) > COUNTED_FROM and data.count(b",") + data.count(b"[") + data.count(b"{")
    if values > MAX_VALUES:
        msg = f"holds more than {MAX_VALUES:,} JSON values"
        raise BadAnnotation(msg)
    try:
        doc = json.loads(data, parse_constant=_not_json)
    except _NotJson as exc:
        msg = f"holds {exc}, which JSON does not allow"
        raise BadAnnotation(msg) from exc
    except json.JSONDecodeError as exc:
        msg = f"is not valid JSON (line {exc.lineno})"
        raise BadAnnotation(msg) from exc
    except (ValueError, RecursionError) as exc:  # bad UTF-8; nesting past the stack
        msg = "is not valid JSON" if isinstance(exc, ValueError) else "is nested too deeply"
        raise BadAnnotation(msg) from exc
    if not isinstance(doc, dict):
        msg = f"is a JSON {type(doc).__name__}, not an object"
        raise BadAnnotation(msg)
    if not isinstance(doc.get("image"), dict):
        msg = "has no 'image' object"
        raise BadAnnotation(msg)
    if not isinstance(doc.get("annotations"), list):
        msg = "has no 'annotations' list"
        raise BadAnnotation(msg)
    return doc


def image_fields(doc: dict[str, Any]) -> tuple[int, int, int]:
    """(image_id, width, height), each a whole number, the sides within the limits."""
    image = doc["image"]
    values = [image.get(key) for key in ("image_id", "width", "height")]
    if not all(_whole(v) for v in values):
        msg = f"has image_id, width, height {values!r:.80}, not whole numbers"
        raise BadAnnotation(msg)
    image_id, width, height = values
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or width * height > MAX_PIXELS:
        msg = f"says the image is {width}x{height}, past the limits ({_LIMITS})"
        raise BadAnnotation(msg)
    return image_id, width, height


def mask_size_problem(declared: Any) -> str | None:
    """Why ``segmentation.size`` must not reach a decoder, or None when it may."""
    if not (isinstance(declared, list) and len(declared) == 2 and all(map(_whole, declared))):
        return f"segmentation.size is {declared!r:.40}, not [height, width]"
    height, width = declared
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE) or height * width > MAX_PIXELS:
        return f"segmentation.size {height}x{width} is past the limits ({_LIMITS})"
    return None


def check_masks(doc: dict[str, Any]) -> None:
    """Every annotation an object whose RLE a decoder may take (a string, a size in limits)."""
    for ann in doc["annotations"]:
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str):
            msg = "has an annotation without an RLE string"
            raise BadAnnotation(msg)
        if not seg["counts"].isascii():  # COCO's RLE letters are '0' to 'o'
            msg = "has an annotation whose RLE string is not ASCII"
            raise BadAnnotation(msg)
        if (problem := mask_size_problem(seg.get("size"))) is not None:
            msg = f"has an annotation whose {problem}"
            raise BadAnnotation(msg)
        area = ann.get("area", 0)
        if (
            not isinstance(area, int | float)
            or isinstance(area, bool)
            or not 0 <= area <= MAX_PIXELS
        ):
            msg = f"has an annotation whose area is {area!r:.40}"  # 1e999 parses as inf
            raise BadAnnotation(msg)
