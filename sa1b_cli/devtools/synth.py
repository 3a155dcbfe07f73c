"""Make synthetic shards in SA-1B's format: a gzip stream named .tar, random member order.

Members are ``./sa_<id>.jpg`` (a real JPEG) and ``./sa_<id>.json`` (the real schema,
valid COCO RLE masks from pycocotools), after a leading ``./`` directory entry.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from isal import igzip
from pycocotools import mask as mask_utils

__all__ = ["ShardSpec", "annotation_json", "jpeg_bytes", "make_shard", "shard_members"]

IMAGES_PER_SHARD = 11186


@dataclass(frozen=True, slots=True)
class ShardSpec:
    index: int
    images: int = 6
    width: int = 96
    height: int = 64
    masks: int = 3
    pad_bytes: int = 0  # extra incompressible bytes per image (JPEG APP segment) for big shards
    seed: int = 0
    gzip: bool = True


def jpeg_bytes(width: int, height: int, *, seed: int, pad: int = 0, smooth: bool = False) -> bytes:
    from PIL import Image  # only the generator needs Pillow

    rng = np.random.default_rng(seed)
    if smooth:  # a gradient: photo-sized files at any resolution
        ramp = np.linspace(0, 255, width, dtype=np.uint8)
        pixels = np.broadcast_to(ramp[None, :, None], (height, width, 3)).copy()
        pixels[..., (seed % 3)] //= 2
    else:
        pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=80)
    data = out.getvalue()
    if pad:
        # APP15 segments are skipped by every decoder: valid JPEG, any size.
        filler = rng.bytes(pad)
        segments = [
            b"\xff\xef" + (len(c) + 2).to_bytes(2, "big") + c
            for c in (filler[i : i + 65000] for i in range(0, len(filler), 65000))
        ]
        data = data[:2] + b"".join(segments) + data[2:]
    return data


def _mask(rng: random.Random, height: int, width: int) -> np.ndarray[Any, Any]:
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    top, left = rng.randrange(height // 2), rng.randrange(width // 2)
    mask[top : top + rng.randrange(1, height // 2), left : left + rng.randrange(1, width // 2)] = 1
    return mask


def annotation_json(image_id: int, width: int, height: int, masks: int, *, seed: int) -> bytes:
    rng = random.Random(seed)
    annotations = []
    for n in range(masks):
        rle = mask_utils.encode(_mask(rng, height, width))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        annotations.append(
            {
                "id": image_id * 1000 + n,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "bbox": [x, y, w, h],
                "area": int(mask_utils.area(rle)),
                "predicted_iou": round(rng.uniform(0.8, 1.0), 6),
                "stability_score": round(rng.uniform(0.9, 1.0), 6),
                "crop_box": [0.0, 0.0, float(width), float(height)],
                "point_coords": [[rng.uniform(0, width), rng.uniform(0, height)]],
            }
        )
    image = {
        "image_id": image_id,
        "width": width,
        "height": height,
        "file_name": f"sa_{image_id}.jpg",
    }
    return json.dumps({"image": image, "annotations": annotations}).encode()


def shard_members(spec: ShardSpec) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) in random order, ids as SA-1B numbers them."""
    first = spec.index * IMAGES_PER_SHARD + 1
    ids = list(range(first, first + spec.images))
    pool = [
        jpeg_bytes(spec.width, spec.height, seed=spec.seed + k, pad=spec.pad_bytes)
        for k in range(min(4, spec.images))
    ]
    members: list[tuple[str, bytes]] = []
    for k, image_id in enumerate(ids):
        members.append((f"./sa_{image_id}.jpg", pool[k % len(pool)]))
        members.append(
            (
                f"./sa_{image_id}.json",
                annotation_json(
                    image_id, spec.width, spec.height, spec.masks, seed=spec.seed * 7919 + image_id
                ),
            )
        )
    random.Random(spec.seed + spec.index).shuffle(members)
    yield from members


def make_shard(path: Path, spec: ShardSpec) -> Path:
    """Write one shard to ``path``; returns the path."""
    raw = path.open("wb")
    stream = (
        igzip.IGzipFile(fileobj=raw, mode="wb", compresslevel=1)  # type: ignore[no-untyped-call]
        if spec.gzip
        else raw
    )
    with raw, stream, tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        folder = tarfile.TarInfo("./")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, data in shard_members(spec):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_680_000_000
            tar.addfile(info, io.BytesIO(data))
    return path
