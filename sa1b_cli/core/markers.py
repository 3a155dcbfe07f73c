"""Completion markers: ``<out>/.done/sa_000000.json`` is the only proof a shard is extracted.

Written last by extraction (extract/marks.py), read by extraction and by ``show``; a
marker records the layout and ``--only`` it was made with. Beside them, the rows of each
shard's index (``<out>/index/sa_000000.csv``), read by the same two.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sa1b_cli.core.files import open_own, read_at_most
from sa1b_cli.core.layouts import Layout, Only

__all__ = ["INDEX_GLOB", "index_rows", "marked_layout", "marker_path", "read_marker", "stem"]

MAX_MARKER = 16 << 20  # bytes read of a marker at most (sa1b writes a few hundred)
INDEX_GLOB = "sa_[0-9][0-9][0-9][0-9][0-9][0-9].csv"  # a shard's index, and nothing else there
MAX_ROW = 32 << 10  # an index row is six whole numbers (sides read from 4 KiB of JSON at most)
_ROW = re.compile(rb"\d+(?:,\d+){5}")


def stem(name: str) -> str:
    return name.removesuffix(".tar")


def marker_path(out: Path, name: str) -> Path:
    return out / ".done" / f"{stem(name)}.json"


def marked_layout(marker: dict[str, Any]) -> Layout | None:
    """The layout a marker records (markers before layouts existed: shard); None if unknown."""
    try:
        return Layout(str(marker.get("layout", Layout.SHARD)))
    except ValueError:
        return None


def read_marker(out: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads(read_at_most(marker_path(out, name), MAX_MARKER, own=True))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and _well_formed(data) else None


def _well_formed(marker: dict[str, Any]) -> bool:
    """The fields sa1b reads hold what it writes; a marker that does not is not its own, and
    its shard counts as not extracted (a KeyError here once ended the run). A layout this
    version does not know is left to ``marked_layout``: said, and never written over."""
    if marker.get("only") not in (None, *Only):
        return False
    if marker.get("layout") != Layout.WEBDATASET:
        return True
    counts = (marker.get("nsamples"), marker.get("filesize"))
    return all(type(n) is int and n >= 0 for n in counts)


def index_rows(path: Path) -> Iterator[str]:
    """The rows of a shard's index (``image_id,width,height,masks,jpg_bytes,json_bytes``).

    sa1b writes the file, but it sits in the user's folder: its header and any line that is
    not six whole numbers (bad UTF-8, escapes, a line of gigabytes) are passed over unread,
    and a pipe, a link or a folder there holds no rows.
    """
    try:
        raw = open_own(path)
    except OSError:
        return
    with io.BufferedReader(raw) as lines:  # type: ignore[type-var]
        whole = True  # the line read so far began at a line's start
        while line := lines.readline(MAX_ROW):
            if whole and _ROW.fullmatch(line.rstrip(b"\n")):
                yield line.rstrip(b"\n").decode("ascii")
            whole = line.endswith(b"\n")
