"""Per-shard claims that work on shared filesystems where flock is ignored.

A claim is a file created with O_EXCL (atomic on local disks and on NFSv3+, Lustre
and GPFS). The holder refreshes its mtime as a heartbeat; a claim whose heartbeat
is older than the stale limit, or whose process is gone on this host, is taken
over by renaming it aside first, so only one taker can win.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sa1b_cli.core.files import read_at_most
from sa1b_cli.core.text import escaped

__all__ = ["MAX_CLAIM", "Claim", "ClaimHolder", "is_stale", "read_claim", "try_claim"]

DEFAULT_STALE_AFTER = 120.0
MAX_CLAIM = 4096  # bytes: a claim sa1b writes takes about 100
MAX_PID = 1 << 22  # Linux's largest pid_max


@dataclass(frozen=True, slots=True)
class ClaimHolder:
    host: str
    pid: int
    token: str
    started: float
    heartbeat: float

    def describe(self) -> str:
        return f"{self.host} (pid {self.pid})"


@dataclass(slots=True)
class Claim:
    """A claim this process holds; release it when the shard's work is over."""

    path: Path
    token: str

    def heartbeat(self) -> bool:
        """Refresh the claim; False when another process has taken it over."""
        holder = read_claim(self.path)
        if holder is None or holder.token != self.token:
            return False
        with contextlib.suppress(OSError):
            os.utime(self.path)
        return True

    def release(self) -> None:
        holder = read_claim(self.path)
        if holder is not None and holder.token == self.token:
            with contextlib.suppress(OSError):
                self.path.unlink()


def read_claim(path: Path) -> ClaimHolder | None:
    """The claim's holder; None when it cannot be read or is not one sa1b writes (a claim
    on a shared root is anybody's file: a pid of 10**30 made ``os.kill`` overflow)."""
    try:
        data = json.loads(read_at_most(path, MAX_CLAIM, own=True))
        mtime = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    host, pid, token, started = (data.get(k) for k in ("host", "pid", "token", "started"))
    if not (isinstance(host, str) and isinstance(token, str) and type(pid) is int):
        return None
    if escaped(host) != host:  # shown by status: a host name has no control characters
        return None
    if not (0 < pid <= MAX_PID and isinstance(started, int | float)) or type(started) is bool:
        return None
    return ClaimHolder(host, pid, token, float(started), mtime)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # A killed process stays a zombie until reaped, and kill(pid, 0) still succeeds on it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def is_stale(holder: ClaimHolder | None, now: float, stale_after: float) -> bool:
    if holder is None:
        return True  # unreadable: its writer died between create and write
    if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
        return True
    return now - holder.heartbeat > stale_after


def _create(path: Path, token: str, now: float) -> bool:
    body = json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "started": now}
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _take_over(path: Path, stale: ClaimHolder | None, token: str) -> None:
    aside = path.with_name(f"{path.name}.stale.{token}")
    try:
        os.rename(path, aside)  # of several takers, only one moves any given file
    except FileNotFoundError:
        return
    moved = read_claim(aside)
    if stale is not None and moved is not None and moved.token != stale.token:
        # Another taker replaced the stale claim between our read and our rename:
        # put its fresh claim back (link never overwrites) instead of stealing it.
        with contextlib.suppress(OSError):
            os.link(aside, path)
    with contextlib.suppress(OSError):
        aside.unlink()


def try_claim(
    path: Path, *, stale_after: float = DEFAULT_STALE_AFTER, clock: Callable[[], float] = time.time
) -> Claim | ClaimHolder:
    """Claim ``path``; returns the Claim, or the live holder that has it."""
    token = secrets.token_hex(8)
    for _ in range(3):
        if _create(path, token, clock()):
            return Claim(path, token)
        holder = read_claim(path)
        if not is_stale(holder, clock(), stale_after):
            assert holder is not None
            return holder
        _take_over(path, holder, token)
    holder = read_claim(path)
    return holder if holder is not None else ClaimHolder("unknown", 0, "", 0.0, 0.0)
