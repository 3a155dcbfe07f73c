"""What one download run is asked to do (each stage keeps its config in its config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sa1b_cli.core.config import DEFAULT_CONNECTIONS, DEFAULT_JOBS
from sa1b_cli.core.selection import Selection

__all__ = ["DownloadConfig"]


@dataclass(frozen=True, slots=True)
class DownloadConfig:
    root: Path
    links: Path
    selection: Selection
    jobs: int = DEFAULT_JOBS
    checksums: tuple[str, ...] = ()
    max_rate: float | None = None
    timeout: float = 30.0
    max_attempts: int = 8
    check_space: bool = True
    stale_after: float = 120.0
    connections: int = DEFAULT_CONNECTIONS  # ceiling on connections in all
    split: bool = True  # several Range connections per shard when the link has room
    known: bool = False  # check the community md5 on arrival (fetching the list if needed)
