"""What every extraction layout leaves beside the data: per-shard index rows and the marker.

``<out>/index/sa_000000.csv`` has one row per image (read from the JSON's first bytes, not
by listing files); ``<out>/.done/sa_000000.json`` is written last and is the only proof
that a shard is extracted.
"""

from __future__ import annotations

import csv
import io
import json
import re
import stat
import time
from pathlib import Path
from typing import Any

from sa1b_cli.core.annotation import BadAnnotation, image_fields, load_annotation
from sa1b_cli.core.archive import ArchiveError
from sa1b_cli.core.markers import marker_path, stem
from sa1b_cli.core.store import atomic_write_text
from sa1b_cli.core.text import shown

__all__ = [
    "INDEX_FIELDS",
    "InTheWay",
    "Rows",
    "clear_way",
    "index_row",
    "write_marker",
    "write_shard_index",
]

INDEX_FIELDS = ("image_id", "width", "height", "masks", "jpg_bytes", "json_bytes")
_HEAD_RE = {
    key: re.compile(rb'"%s"\s*:\s*(\d+)' % key.encode()) for key in ("image_id", "width", "height")
}


def index_row(image_id: int, data: bytes) -> dict[str, int]:
    head = data[:4096]
    values = {k: int(m.group(1)) for k, r in _HEAD_RE.items() if (m := r.search(head))}
    if len(values) < 3:  # unusual key order: parse it properly
        try:
            _, width, height = image_fields(load_annotation(data))
        except BadAnnotation as exc:  # fails the shard, never the run
            msg = f"sa_{image_id}.json {exc}"
            raise ArchiveError(msg) from exc
        values = {"width": width, "height": height}
    return {
        "image_id": image_id,
        "width": values["width"],
        "height": values["height"],
        "masks": data.count(b'"segmentation"'),
        "jpg_bytes": 0,
        "json_bytes": len(data),
    }


class Rows:
    """Index rows of one shard, filled as members arrive in any order."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, int]] = {}
        self.jpg_sizes: dict[int, int] = {}

    def add(self, image_id: int, kind: str, data: bytes) -> None:
        if kind == "json":
            row = index_row(image_id, data)
            row["jpg_bytes"] = self.jpg_sizes.pop(image_id, 0)
            self.rows[image_id] = row
        elif image_id in self.rows:
            self.rows[image_id]["jpg_bytes"] = len(data)
        else:
            self.jpg_sizes[image_id] = len(data)


def write_shard_index(
    out: Path, name: str, rows: dict[int, dict[str, int]], *, sync: bool = True
) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[i] for i in sorted(rows))
    folder = out / "index"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{stem(name)}.csv", buffer.getvalue(), sync=sync)


class InTheWay(Exception):
    """Where a shard's output goes, something sa1b never makes is in the way: that shard fails."""


def clear_way(target: Path, *, folder: bool) -> None:
    """Raise ``InTheWay`` for a link where a folder goes, or the wrong kind of entry.

    A link or a file at a folder's name would end the whole run (``rmtree`` refuses a link,
    ``rename`` a non-folder); a link at a file's name is replaced, never written through.
    """
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if folder and stat.S_ISLNK(mode):
        what = "a symbolic link"
    elif folder == stat.S_ISDIR(mode) or (not folder and stat.S_ISLNK(mode)):
        return
    else:
        what = "a file" if folder else "a directory"
    msg = f"{shown(target.name)} in {shown(str(target.parent))} is {what}, which sa1b never makes"
    raise InTheWay(msg)


def write_marker(out: Path, name: str, *, sync: bool = True, **fields: Any) -> None:
    marker = {"shard": name, **fields, "finished": time.time()}
    marker_path(out, name).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker_path(out, name), json.dumps(marker), sync=sync)
