"""A loopback site for end-to-end tests: synthetic shards, the mirror, manifests, the sa1b command."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sa1b_cli.devtools.mirror import Mirror, write_manifest
from sa1b_cli.devtools.synth import ShardSpec, make_shard

SA1B = str(Path(sys.executable).with_name("sa1b"))


@dataclass
class Site:
    tmp: Path
    mirror: Mirror
    names: list[str]
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.tmp / "root"

    def manifest(self, *, expires_in: float = 30 * 86400, name: str = "links.txt") -> Path:
        path = self.tmp / name
        return write_manifest(path, self.mirror, self.names, expires=time.time() + expires_in)

    def source(self, name: str) -> bytes:
        return (self.mirror.folder / name).read_bytes()

    def ranges(self, name: str) -> list[str | None]:
        return [r["range"] for r in self.mirror.requests if r["name"] == name]  # type: ignore[misc]

    def cmd(self, *args: str) -> list[str]:
        return [SA1B, *args]

    extra_env: dict[str, str] = field(default_factory=dict)  # SA1B_* settings for every run

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cmd(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**env(), **self.extra_env},
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()
        )

    def run_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        done = self.run(*args, "--json")
        assert done.stdout, done.stderr
        return done.returncode, json.loads(done.stdout)


def env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SA1B_", "SLURM_"))}
    return {**keep, "COLUMNS": "200"}


def build_site(tmp: Path, *, shards: int = 3, images: int = 6, pad: int = 0) -> Site:
    folder = tmp / "cdn"
    folder.mkdir()
    names = []
    for index in range(shards):
        spec = ShardSpec(index, images=images, pad_bytes=pad, seed=index)
        names.append(make_shard(folder / f"sa_{index:06d}.tar", spec).name)
    (folder / "sa_images_ids.txt").write_text("".join(f"{i}\n" for i in range(1, 20)))
    names.append("sa_images_ids.txt")
    return Site(tmp, Mirror(folder).start(), names)


@contextlib.contextmanager
def tmpfs(mount: Path, options: str, *, why: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` for the test (skipped, saying ``why``, where mount fails)."""
    with _mounted(mount, ["-t", "tmpfs", "-o", options, "tmpfs"], why=why) as mounted:
        yield mounted


@contextlib.contextmanager
def ext4(mount: Path, kib: int, *, why: str) -> Iterator[Path]:
    """A small ext4 file system in an image under ``mount``'s parent, mounted at ``mount``
    for the test (skipped, saying ``why``, where mkfs or a loop mount is not possible)."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip(f"cannot make {why} here: no mkfs.ext4")
    image = mount.with_suffix(".img")
    with image.open("wb") as handle:
        handle.truncate(kib * 1024)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot make {why} here: {made.stderr.decode().strip()}")
    with _mounted(mount, ["-o", "loop", str(image)], why=why) as mounted:
        yield mounted


@contextlib.contextmanager
def _mounted(mount: Path, source: list[str], *, why: str) -> Iterator[Path]:
    """``mount <source...> <mount>`` for the test, unmounted after (skipped where it fails)."""
    mount.mkdir(exist_ok=True)
    made = subprocess.run(["mount", *source, str(mount)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount {why} here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def wait_for(predicate: Any, *, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
