"""`make demo`: the whole job against synthetic shards on 127.0.0.1 (no access to Meta needed).

Makes a few SA-1B-format shards, serves them from the CDN-like mirror, writes a
manifest in Meta's format, then runs the real ``sa1b`` command: links, download
(with a dropped connection to show resume), verify, extract and status.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from sa1b_cli.devtools.mirror import Mirror, write_manifest
from sa1b_cli.devtools.synth import ShardSpec, make_shard

__all__ = ["main"]

DEMO = Path("demo-root")
SHARDS = 4


def _step(title: str, *args: str) -> int:
    print(f"\n\033[1m$ sa1b {' '.join(args)}\033[0m  # {title}", flush=True)
    sa1b = str(Path(sys.executable).with_name("sa1b"))
    return subprocess.run([sa1b, *args], check=False).returncode


def _build(cdn: Path) -> list[str]:
    cdn.mkdir(parents=True)
    names = []
    for index in range(SHARDS):
        spec = ShardSpec(index, images=24, width=320, height=240, masks=5, pad_bytes=40_000)
        names.append(make_shard(cdn / f"sa_{index:06d}.tar", spec).name)
    (cdn / "sa_images_ids.txt").write_text("".join(f"{i}\n" for i in range(1, 97)))
    return [*names, "sa_images_ids.txt"]


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    print(f"making {SHARDS} synthetic SA-1B shards in {DEMO}/cdn ...")
    names = _build(DEMO / "cdn")
    with Mirror(DEMO / "cdn") as mirror:
        links = write_manifest(
            DEMO / "segment_anything_links.txt", mirror, names, expires=time.time() + 30 * 86400
        )
        print(f"mirror serving on {mirror.base}; manifest at {links}")
        mirror.faults.drop_after["sa_000001.tar"] = 300_000  # show a resume
        root = str(DEMO / "root")
        common = ("--root", root)
        codes = [
            _step("inspect the manifest", "links", str(links)),
            _step("download 3 shards", "download", "--links", str(links), *common, "--subset", "3"),
            _step("download everything else", "download", "--links", str(links), *common),
            _step("check what is on disk", "status", *common),
        ]
        codes += _later_steps(common)
        resumed = [r for r in mirror.requests if r["name"] == "sa_000001.tar" and r["range"]]
        print(
            "\nresume requests seen by the mirror for sa_000001.tar:",
            [r["range"] for r in resumed],
        )
    failed = [c for c in codes if c != 0]
    print(
        "\ndemo finished: "
        + ("every step succeeded" if not failed else f"{len(failed)} step(s) failed")
    )
    sys.exit(1 if failed else 0)


def _later_steps(common: tuple[str, ...]) -> list[int]:
    return [
        _step("check every byte, image and mask", "verify", *common, "--deep"),
        _step("extract the four shards", "extract", *common, "--subset", "4"),
        _step(
            "export an md5 list others can check",
            "verify",
            *common,
            "--export",
            str(DEMO / "sa1b.md5"),
            "--algo",
            "md5",
            "--quiet",
        ),
    ]


if __name__ == "__main__":
    main()
