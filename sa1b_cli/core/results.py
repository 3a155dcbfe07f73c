"""Per-shard outcomes as data, and the exit code computed from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sa1b_cli.core.events import Outcome

__all__ = ["EXPIRED_HINT", "INTERRUPTED", "DownloadStatus", "ShardResult", "exit_code"]

DownloadStatus = Literal[
    "downloaded",  # fetched (or finished) in this run and checked
    "present",  # already complete and checked before this run
    "expired",  # the link's signature expired; partial bytes kept
    "failed",  # gave up after retries, digest mismatch, link rejected...
    "busy",  # another live process holds this shard's claim
    "interrupted",  # Ctrl-C; partial bytes kept
    "no_link",  # selected, but the manifest has no row for it
]
GOOD_DOWNLOAD = frozenset({"downloaded", "present"})
EXPIRED_HINT = "Get a fresh manifest from Meta's SA-1B page and run again with --links NEW"


@dataclass(frozen=True, slots=True)
class ShardResult:
    """The outcome of one shard in one run."""

    name: str
    status: DownloadStatus
    bytes_done: int = 0
    size: int | None = None
    bytes_fetched: int = 0
    digests: tuple[tuple[str, str], ...] = ()
    detail: str | None = None  # what happened, for people; never holds a signed query
    hint: str | None = None  # what to do next
    expired_at: datetime | None = None
    connections: int = 0  # the most connections this shard used at once in this run
    fallback: str | None = None  # why the server's answers forced one connection, if they did

    @property
    def ok(self) -> bool:
        return self.status in GOOD_DOWNLOAD


INTERRUPTED = 130  # "interrupted, progress kept": run the same command again to continue


def exit_code(results: Iterable[Outcome]) -> int:
    """The one rule for every command: 130 if interrupted, 0 if every shard is good, else 1."""
    results = list(results)
    if any(r.status == "interrupted" for r in results):
        return INTERRUPTED
    return 0 if all(r.ok for r in results) else 1
