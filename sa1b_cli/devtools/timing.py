"""Timing whole commands for the benchmarks: wall time, CPU of the process tree, peak RSS."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GIB", "REPEAT", "Run", "measure", "median_run", "repeat", "summary"]

GIB = 1 << 30
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    cpu: float  # user + system seconds of the command and its children
    rss_mb: float  # peak resident set of the largest process


def measure(
    cmd: list[str], *, cwd: Path | None = None, before: Callable[[], None] | None = None
) -> Run:
    """Run cmd in a fresh helper so getrusage(RUSAGE_CHILDREN) covers it alone."""
    if before is not None:
        before()
    probe = (
        "import resource,subprocess,sys,time,json;t=time.perf_counter();"
        "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE);"
        "w=time.perf_counter()-t;u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps([r.returncode,w,u.ru_utime+u.ru_stime,u.ru_maxrss/1024,r.stderr.decode()[-400:]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd], cwd=cwd, capture_output=True, text=True, check=True
    )
    code, wall, cpu, rss, err = json.loads(out.stdout)
    if code != 0:
        msg = f"{cmd[0]} exited {code}: {err}"
        raise RuntimeError(msg)
    return Run(wall, cpu, rss)


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.seconds for r in runs),
        statistics.median(r.cpu for r in runs),
        max(r.rss_mb for r in runs),
    )


_RATES = {"GB/s": (1e9, 3), "MiB/s": (2**20, 1)}  # unit -> (bytes, digits kept)


def summary(run: Run, total: int, rate: str = "GB/s") -> dict[str, float]:
    """A download of ``total`` bytes as the reports show it (``rate``: "GB/s" or "MiB/s")."""
    unit, digits = _RATES[rate]
    return {
        "seconds": round(run.seconds, 3),
        rate: round(total / unit / run.seconds, digits),
        "cpu_s_per_GiB": round(run.cpu / (total / GIB), 3),
        "peak_rss_MB": round(run.rss_mb, 1),
    }


def repeat(
    cmd: list[str], before: Callable[[], None], *, cwd: Path | None = None, n: int = REPEAT
) -> Run:
    return median_run([measure(cmd, cwd=cwd, before=before) for _ in range(n)])
