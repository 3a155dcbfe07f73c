"""Defaults and the settings every stage shares. Precedence: CLI flag > SA1B_* env > defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sa1b_cli.core.errors import ManifestError, UsageError

__all__ = [
    "DEFAULT_CONNECTIONS",
    "DEFAULT_JOBS",
    "DEFAULT_LINKS",
    "DEFAULT_ROOT",
    "parse_rate",
    "resolve_links",
]

DEFAULT_ROOT = Path("sa1b")
DEFAULT_LINKS = Path("links/segment_anything_links.txt")
DEFAULT_JOBS = 4
DEFAULT_CONNECTIONS = 128
SPACE_MARGIN = 256 << 20  # leave room for records, indexes and the filesystem itself


def resolve_links(given: Path | None, root: Path) -> Path:
    """--links / SA1B_LINKS, else links/segment_anything_links.txt, else the root's copy."""
    if given is not None:
        return given
    if DEFAULT_LINKS.is_file():
        return DEFAULT_LINKS
    remembered = root / "manifest.tsv"
    if remembered.is_file():
        return remembered
    msg = "no manifest given and none found"
    error = ManifestError(msg, path=Path(os.fspath(DEFAULT_LINKS)))
    error.hint = (
        "Pass Meta's manifest with --links FILE (or save it as "
        f"{DEFAULT_LINKS}); links/README.md says where to get it."
    )
    raise error


# Binary, like every size sa1b shows: 200M, 200MB and 200MiB are all 200 MiB/s.
_RATE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_rate(value: str | None) -> float | None:
    """``"200M"``, ``"1.5GB/s"``, ``"50MiB"`` -> bytes per second (binary units); "0" -> none."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgG]i?)?[bB]?(?:/s)?\s*", value)
    if not match:
        msg = f"--max-rate {value!r}: use a rate such as 200M, 1.5G or 50MiB (bytes per second)"
        raise UsageError(msg, hint="Leave --max-rate out (or give 0) for no cap.")
    rate = float(match.group(1)) * _RATE_UNITS[(match.group(2) or "").lower().rstrip("i")]
    return rate or None
