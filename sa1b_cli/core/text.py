"""Text for people: sizes in binary units, and foreign strings made safe to show."""

from __future__ import annotations

import re

__all__ = ["counted", "escaped", "format_size", "natural", "shown"]

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def natural(text: str) -> int | None:
    """``text`` as a whole number when it is ASCII digits only, else None. ``str.isdigit``
    also holds for "²", which ``int`` refuses: one such byte from a server ended a run."""
    return int(text) if text.isascii() and text.isdigit() else None


def format_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, as everywhere in sa1b."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def counted(n: int, word: str) -> str:
    """``counted(1, "shard")`` -> ``"1 shard"``; ``counted(10, "shard")`` -> ``"10 shards"``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def escaped(text: str) -> str:
    """``text`` with control characters, line breaks and bidirectional overrides escaped
    (``\\x1b``, ``\\n``): what a terminal shows as text, not obeys."""
    return _CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def shown(text: str, limit: int = 120) -> str:
    """A foreign string (server body, member or file name) safe for a terminal or a log line:
    ``escaped``, and cut with a marker past ``limit`` characters."""
    safe = escaped(text)
    if len(safe) > limit:
        return safe[:limit] + f"… ({len(safe) - limit:,} more characters)"
    return safe
