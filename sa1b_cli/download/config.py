"""What one download run is asked to do, and what one shard's transfer is given to work with.

(Each stage keeps its config in its config.py.)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sa1b_cli.core.config import DEFAULT_CONNECTIONS, DEFAULT_JOBS
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.selection import Selection
from sa1b_cli.download.controller import ConnectionController, ControllerSettings
from sa1b_cli.download.hosts import HostWatch
from sa1b_cli.download.ratelimit import RateLimiter
from sa1b_cli.download.retries import Backoff

__all__ = ["DownloadConfig", "TransferContext", "TransferSettings"]


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


@dataclass(frozen=True, slots=True)
class TransferSettings:
    stall_timeout: float = 30.0
    min_rate: float = 1024.0  # bytes a second a connection must bring, over a stall_timeout
    max_attempts: int = 8  # attempts in a row without a whole piece landing, per shard
    patience: float = 120.0  # seconds of failing attempts without progress, per shard
    backoff: Backoff = field(default_factory=Backoff)
    block_size: int = 1 << 20  # bytes received (and written) at a time, at most
    reserve: int = 4 << 20  # bytes one receiving thread call may write (<= min_piece)
    checkpoint_bytes: int = 64 << 20
    checkpoint_seconds: float = 2.0
    split: bool = True  # parallel Range segments when the size is known
    per_shard: int = 64  # connections one shard may hold at most
    min_piece: int = 4 << 20  # each request costs ~1 ms of Python: no smaller pieces
    max_piece: int = 256 << 20
    max_unsized: int = 32 << 30  # a body of no known size stops here: 3x any SA-1B shard


@dataclass(slots=True)
class TransferContext:
    """The seams of a transfer: network, clocks, sleep, randomness, progress, connections."""

    client: httpx.AsyncClient
    settings: TransferSettings = field(default_factory=TransferSettings)
    sink: ProgressSink = field(default_factory=NullSink)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    wall_clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    limiter: RateLimiter | None = None
    controller: ConnectionController = field(
        default_factory=lambda: ConnectionController(ControllerSettings(initial=64))
    )
    fetched: dict[str, int] = field(default_factory=dict)  # bytes received, by shard, so far
    hosts: HostWatch = field(default_factory=HostWatch)  # which hosts answer, for all shards
