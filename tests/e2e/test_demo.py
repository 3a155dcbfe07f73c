"""make demo's script, run as a new user would: every step succeeds, and what it prints is true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.site import env

pytestmark = pytest.mark.slow


def test_the_demo_runs_every_step_and_says_nothing_odd(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "sa1b_cli.devtools.demo"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "every step succeeded" in out and "Traceback" not in out
    assert "retry 0" not in out and "1 shards" not in out and "(s)" not in out
    assert "bytes=" in out  # the resume the demo stages was seen by the mirror
