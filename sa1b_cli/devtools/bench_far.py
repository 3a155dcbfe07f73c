"""The far-CDN cases of `make bench`: every connection capped, as a distant CDN caps it.

A far CDN gives each TCP connection window/RTT of the link; nginx's ``limit_rate`` models
that cap on loopback, ``limit_conn`` (answering 503) a server that counts connections.
sa1b on its defaults is compared, side by side in the same run, with ``aria2c -x16 -s16
-k4M -j<shards>`` (what power users run) and ``aria2c -x1`` (one connection per file),
downloading into tmpfs, over plain HTTP and over HTTPS (nginx with a throwaway self-signed
certificate, trusted through ``SSL_CERT_FILE`` by sa1b and ``--ca-certificate`` by aria2c:
Meta's CDN is HTTPS). Over HTTPS, ``tls_floor`` runs too: aria2c's way in plain Python, what
the interpreter itself costs. Files are random bytes: a download does not look inside.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sa1b_cli.devtools.nginx import NginxProcess
from sa1b_cli.devtools.timing import REPEAT, Run, measure, median_run, summary

__all__ = ["bench_connection_limited", "bench_far_busy", "bench_far_cdn", "far_files"]

CAPS_MIB = tuple(int(c) for c in os.environ.get("BENCH_FAR_CAPS", "8,24").split(","))
CASES = {"1x768MiB": (1, 768), "2x384MiB": (2, 384), "10x96MiB": (10, 96)}
SCHEMES = tuple(os.environ.get("BENCH_FAR_SCHEMES", "http,https").split(","))
BASE_PORT = 18490
TLS_PORT = 18510  # + the cap's index, as BASE_PORT
LIMITED_PORT = 18499
ARIA2_X1 = os.environ.get("BENCH_ARIA2_X1", "1") == "1"  # one-connection baseline: slow, once
KNOWN = os.environ.get("BENCH_FAR_KNOWN", "1") == "1"  # also sa1b download --known (md5)


def far_files(folder: Path) -> dict[str, list[Path]]:
    """Random files for each case (made once, reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(11)
    made: dict[str, list[Path]] = {}
    for case, (count, mib) in CASES.items():
        paths = []
        for k in range(count):
            path = folder / f"{case}-{k}.bin"
            if not path.exists() or path.stat().st_size != mib << 20:
                with path.open("wb") as out:
                    for _ in range(mib):
                        out.write(rng.randbytes(1 << 20))
            paths.append(path)
        made[case] = paths
    return made


class CappedNginx(NginxProcess):
    """nginx on loopback: one server per cap, plus one allowing 3 connections (503 past that)."""

    def __init__(self, folder: Path, work: Path, cert: Path | None = None) -> None:
        servers = "".join(
            f"server {{ listen 127.0.0.1:{BASE_PORT + i}; root {folder}; limit_rate {cap}m; "
            "location / { } }\n"
            for i, cap in enumerate(CAPS_MIB)
        )
        if cert is not None:  # the key lies beside it
            servers += "".join(
                f"server {{ listen 127.0.0.1:{TLS_PORT + i} ssl; root {folder}; "
                f"limit_rate {cap}m; ssl_certificate {cert}; "
                f"ssl_certificate_key {cert.with_name('tls-key.pem')}; location / {{ }} }}\n"
                for i, cap in enumerate(CAPS_MIB)
            )
        servers += (
            f"server {{ listen 127.0.0.1:{LIMITED_PORT}; root {folder}; limit_rate 24m; "
            f"access_log {work}/limited.log status; "
            "limit_conn perserver 3; limit_conn_status 503; location / { } }\n"
        )
        http = "log_format status '$status'; limit_conn_zone $server_addr zone=perserver:1m;"
        self.log = work / "limited.log"
        self.log.unlink(missing_ok=True)
        super().__init__(work, "nginx-far", servers, http=http, connections=2048)


def _write_lists(
    base: Path, port: int, files: list[Path], scheme: str = "http"
) -> tuple[Path, Path]:
    query = "_nc_gid&ccb=10-5&oh=00_x&oe=7FFFFFFF&_nc_sid=1"
    links = base / "far-links.txt"
    rows = [
        f"sa_{k:06d}.tar\t{scheme}://127.0.0.1:{port}/{p.name}?{query}" for k, p in enumerate(files)
    ]
    links.write_text("file_name\tcdn_link\n" + "\n".join(rows))
    urls = base / "far-urls.txt"
    urls.write_text("".join(f"{scheme}://127.0.0.1:{port}/{p.name}\n" for p in files))
    return links, urls


def _commands(
    sa1b: str, links: Path, urls: Path, target: Path, count: int, cert: Path | None = None
) -> dict[str, list[str]]:
    aria = ["aria2c", "-q", "--file-allocation=none", "-d", str(target), "-i", str(urls)]
    mine = [sa1b, "download", "--links", str(links), "--root", str(target / "r"), "--quiet"]
    floor: dict[str, list[str]] = {}
    if cert is not None:
        aria.append(f"--ca-certificate={cert}")
        mine = ["env", f"SSL_CERT_FILE={cert}", *mine]
        tool = [sys.executable, "-m", "sa1b_cli.devtools.tls_floor", str(urls), str(target)]
        floor["python_floor"] = ["env", f"SSL_CERT_FILE={cert}", *tool]
    return {
        "sa1b": mine,
        "aria2c_x16": [*aria, "-x16", "-s16", "-k4M", f"-j{count}"],
        "aria2c_x1": [*aria, "-x1", f"-j{count}"],
        **floor,
    }


def bench_far_cdn(
    sa1b: str, files: dict[str, list[Path]], cert: Path | None = None
) -> dict[str, object]:
    """Each scheme x cap x case: sa1b and aria2c -x16 alternated REPEAT times, aria2c -x1 once."""
    combos = [(s, cap, case) for s in SCHEMES for cap in CAPS_MIB for case in files]
    return _far_rows(sa1b, files, cert, combos, extras=True)


def bench_far_busy(
    sa1b: str, files: dict[str, list[Path]], cert: Path | None = None
) -> dict[str, object]:
    """Two far cases again while other processes keep every core busy (a training job).

    A controller that reads "no idle core" as "the CPU limits" once held such a run at one
    connection a shard: 15x aria2c's time. aria2c runs beside the same load.
    """
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        combos = [("http", CAPS_MIB[0], "10x96MiB"), ("https", CAPS_MIB[-1], "2x384MiB")]
        return _far_rows(sa1b, files, cert, combos, extras=False)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _far_rows(
    sa1b: str,
    files: dict[str, list[Path]],
    cert: Path | None,
    combos: list[tuple[str, int, str]],
    *,
    extras: bool,
) -> dict[str, object]:
    report: dict[str, object] = {}
    target = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        for scheme, cap, case in combos:
            tls = cert if scheme == "https" else None
            if scheme == "https" and tls is None:
                continue
            port = (TLS_PORT if tls else BASE_PORT) + CAPS_MIB.index(cap)
            links, urls = _write_lists(target.parent, port, files[case], scheme)
            cmds = _commands(sa1b, links, urls, target, len(files[case]), tls)
            key = f"{cap}MiB/s_{case}" if scheme == "http" else f"https_{cap}MiB/s_{case}"
            report[key] = row = _far_row(cmds, target, files[case], extras=extras)
            print(f"far CDN {key}: {row}", flush=True)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    return report


def _far_row(
    cmds: dict[str, list[str]], target: Path, paths: list[Path], *, extras: bool
) -> dict[str, object]:
    def wipe() -> None:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)

    total = sum(p.stat().st_size for p in paths)
    runs: dict[str, list[Run]] = {"sa1b": [], "aria2c_x16": []}
    before: dict[str, Callable[[], None]] = {"sa1b": wipe, "aria2c_x16": wipe}
    if KNOWN and extras:
        runs["sa1b_known"] = []
        cmds["sa1b_known"] = [*cmds["sa1b"], "--known"]
        before["sa1b_known"] = _with_known_list(wipe, target / "r", paths)
    if "python_floor" in cmds and extras:  # HTTPS: what the interpreter itself costs
        runs["python_floor"], before["python_floor"] = [], wipe
    for _ in range(REPEAT):  # interleaved, so drift hits every tool alike
        for tool in runs:
            runs[tool].append(measure(cmds[tool], before=before[tool]))
    row: dict[str, object] = {}
    for tool, measured in runs.items():
        row[tool] = summary(median_run(measured), total, "MiB/s")
    for tool in [t for t in runs if t != "aria2c_x16"]:
        pairs = zip(runs[tool], runs["aria2c_x16"], strict=True)
        ratio = statistics.median(s.seconds / a.seconds for s, a in pairs)
        row[f"ratio_{tool}_vs_aria2c_x16"] = round(ratio, 3)
    if ARIA2_X1 and extras:
        row["aria2c_x1"] = summary(measure(cmds["aria2c_x1"], before=wipe), total, "MiB/s")
    return row


def _with_known_list(wipe: Callable[[], None], root: Path, paths: list[Path]) -> Callable[[], None]:
    """A `before` that also caches an md5 list of these files as the community list."""
    lines = []
    for k, path in enumerate(paths):
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as handle:
            while block := handle.read(8 << 20):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  sa_{k:06d}.tar\n")
    listing = "".join(lines).encode()
    os.environ["SA1B_KNOWN_SHA256"] = hashlib.sha256(listing).hexdigest()

    def before() -> None:
        wipe()
        (root / "known").mkdir(parents=True)
        (root / "known" / "community-md5.txt").write_bytes(listing)

    return before


def bench_connection_limited(sa1b: str, files: list[Path], log: Path) -> dict[str, object]:
    """nginx serving 3 connections at most (503 past that): sa1b on defaults must get it all."""
    target = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        links, urls = _write_lists(target.parent, LIMITED_PORT, files)
        cmd = [*_commands(sa1b, links, urls, target, len(files))["sa1b"][:-1], "--json"]
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
    finally:
        shutil.rmtree(target, ignore_errors=True)
    import json

    report = json.loads(done.stdout) if done.stdout else {}
    statuses = [s["status"] for s in report.get("shards", [])]
    codes = log.read_text().split() if log.exists() else []
    return {
        "exit_code": done.returncode,
        "shards": len(statuses),
        "failed": sum(1 for s in statuses if s != "downloaded"),
        "responses_503": codes.count("503"),
        "responses_ok": sum(1 for c in codes if c in ("200", "206")),
        "seconds": round(seconds, 2),
        "connections_peak": report.get("connections_peak"),
    }
