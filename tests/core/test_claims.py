"""Per-shard claims: exclusive, stale ones taken over, heartbeats that notice a takeover."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sa1b_cli.core.claims import MAX_CLAIM, Claim, ClaimHolder, read_claim, try_claim


def test_second_claim_sees_the_live_holder(tmp_path: Path):
    path = tmp_path / "s.claim"
    first = try_claim(path)
    assert isinstance(first, Claim)
    second = try_claim(path)
    assert isinstance(second, ClaimHolder)
    assert second.pid == os.getpid() and second.host == socket.gethostname()
    first.release()
    assert isinstance(try_claim(path), Claim)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path):
    path = tmp_path / "s.claim"
    path.write_text(
        json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "token": "old", "started": 0})
    )
    claim = try_claim(path)
    assert isinstance(claim, Claim)
    assert read_claim(path).token == claim.token  # type: ignore[union-attr]


def test_claim_of_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path: Path):
    path = tmp_path / "s.claim"
    path.write_text(json.dumps({"host": "node-7", "pid": 1, "token": "theirs", "started": 0}))
    assert isinstance(try_claim(path, stale_after=60), ClaimHolder)  # fresh mtime: alive
    os.utime(path, (1, 1))  # heartbeat long ago
    assert isinstance(try_claim(path, stale_after=60), Claim)


def test_heartbeat_notices_a_takeover_and_release_spares_the_new_holder(tmp_path: Path):
    path = tmp_path / "s.claim"
    mine = try_claim(path)
    assert isinstance(mine, Claim)
    assert mine.heartbeat()
    os.utime(path, (1, 1))
    theirs = try_claim(path, stale_after=60)
    assert isinstance(theirs, Claim)
    assert not mine.heartbeat()
    mine.release()
    assert read_claim(path).token == theirs.token  # type: ignore[union-attr]


def test_a_racing_taker_does_not_steal_a_fresh_claim(tmp_path: Path):
    path = tmp_path / "s.claim"
    path.write_text(json.dumps({"host": "node-7", "pid": 1, "token": "stale", "started": 0}))
    os.utime(path, (1, 1))
    stale_view = read_claim(path)
    winner = try_claim(path, stale_after=60)  # takes it over
    assert isinstance(winner, Claim)
    from sa1b_cli.core.claims import _take_over

    _take_over(path, stale_view, "late")  # a second taker acting on its old, stale view
    assert read_claim(path).token == winner.token  # type: ignore[union-attr]


def test_unreadable_claim_is_stale(tmp_path: Path):
    path = tmp_path / "s.claim"
    path.write_text("{")
    assert isinstance(try_claim(path), Claim)


def test_claim_of_a_zombie_process_is_stale(tmp_path: Path):
    import time

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not yet reaped: a zombie
    path = tmp_path / "s.claim"
    path.write_text(
        json.dumps({"host": socket.gethostname(), "pid": proc.pid, "token": "z", "started": 0})
    )
    assert isinstance(try_claim(path), Claim)
    proc.wait()


@pytest.mark.parametrize(
    "body",
    [
        {"pid": 10**30},  # os.kill overflowed: 'unexpected error: OverflowError'
        {"pid": -1},  # kill(-1, 0) asks about every process: always 'alive'
        {"pid": 0},
        {"pid": True},
        {"pid": "12"},
        {"pid": 1.5},
        {"host": ["vm"]},
        {"host": "\x1b]0;pwned\x07vm"},  # status shows the holder's host
        {"host": "vm\nerror: forged"},
        {"token": None},
        {"started": "yesterday"},
        "a list, not an object",
    ],
    ids=str,
)
def test_a_claim_sa1b_would_not_write_is_taken_over_and_never_crashes(tmp_path: Path, body):
    path = tmp_path / "s.claim"
    good = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x", "started": 0}
    path.write_text(json.dumps(good | body if isinstance(body, dict) else [body]))
    assert read_claim(path) is None
    assert isinstance(try_claim(path), Claim)


def test_a_claim_file_past_its_bound_is_not_read(tmp_path: Path):
    """Not read whole into memory: a claim sa1b writes takes about 100 bytes."""
    path = tmp_path / "s.claim"
    good = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x", "started": 0}
    path.write_text(json.dumps(good) + " " * MAX_CLAIM)
    assert read_claim(path) is None
    path.write_text(json.dumps(good))
    assert read_claim(path) is not None
