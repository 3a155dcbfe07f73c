"""Hand-made shards for content tests: good pairs, and every kind of damage."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import xxhash
from isal import igzip

from sa1b_cli.core.store import Record, Store
from sa1b_cli.devtools.synth import annotation_json, jpeg_bytes

W, H = 96, 64


def good_pair(image_id: int, *, w: int = W, h: int = H) -> list[tuple[str, bytes]]:
    return [
        (f"./sa_{image_id}.jpg", jpeg_bytes(w, h, seed=image_id)),
        (f"./sa_{image_id}.json", annotation_json(image_id, w, h, 3, seed=image_id)),
    ]


def edit_json(data: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    doc = json.loads(data)
    change(doc)
    return json.dumps(doc).encode()


def tar_bytes(
    members: Sequence[tuple[str, bytes] | tarfile.TarInfo], *, gzip: bool = True
) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        root = tarfile.TarInfo("./")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    data = raw.getvalue()
    return igzip.compress(data) if gzip else data


def install(store: Store, name: str, data: bytes, *, record: bool = True) -> Path:
    """Put bytes in place as if sa1b had downloaded them (with a matching record)."""
    store.ensure()
    path = store.final_path(name)
    path.write_bytes(data)
    if record:
        store.write(
            Record(
                name,
                "complete",
                expected_size=len(data),
                size=len(data),
                digests={"xxh128": xxhash.xxh3_128(data).hexdigest()},
                durable_bytes=len(data),
            )
        )
    return path
