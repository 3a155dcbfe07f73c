"""Completion markers: ``<out>/.done/sa_000000.json`` is the only proof a shard is extracted.

Written last by extraction (extract/marks.py), read by extraction and by ``show``; a
marker records the layout and ``--only`` it was made with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sa1b_cli.core.files import read_at_most
from sa1b_cli.core.layouts import Layout

__all__ = ["marked_layout", "marker_path", "read_marker", "stem"]

MAX_MARKER = 16 << 20  # bytes read of a marker at most (sa1b writes a few hundred)


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
    return data if isinstance(data, dict) else None
