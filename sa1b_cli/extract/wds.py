"""WebDataset shards: each SA-1B shard repacked as an uncompressed tar sorted by member name.

SA-1B's tars are gzip with members in random order; WebDataset groups a sample by the name
up to the first dot and needs a sample's files side by side, so read directly they yield
half-samples, and ``wids`` cannot index them. The usual fix, ``tar -xzf`` then
``tar --sort=name -cf``, writes and reads 22,000 loose files a shard.

Here one pass inflates the shard and appends each member's bytes to a single spill file
beside the output, keeping only (name, offset, size) in memory (about 100 bytes a member).
A second pass writes the tar in ``tar --sort=name`` order (``sa_1.jpg``, ``sa_1.json``,
``sa_10.jpg``...): a 512-byte header from us, the bytes copied from the spill by
``copy_file_range`` in the kernel. Peak disk: spill plus output, about twice the shard's
uncompressed size, for the moment of the copy; memory stays flat whatever the shard size.

Regular files only, short names, no ``./`` entry; built in ``<out>/.tmp-<shard>-<token>/``
and renamed to ``<out>/sa_000000.tar``, then the marker (with the sample count and the
size) is written. The tar is fsync'ed only when its source will be deleted (--delete-tar);
otherwise a marker whose size no longer matches the tar (a power cut) means "redo it".
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any

from sa1b_cli.core.archive import Member, member_id
from sa1b_cli.core.files import write_all
from sa1b_cli.core.markers import read_marker, stem
from sa1b_cli.core.store import atomic_write_text
from sa1b_cli.extract.marks import Rows, clear_way, write_marker, write_shard_index

__all__ = ["INDEX_NAME", "TarRepacker", "write_wids_index"]

INDEX_NAME = "wids-index.json"
BLOCK = 512
MTIME = 1680307200  # 2023-04-01, SA-1B's release: the same bytes on every run


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, MTIME
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _copy(src: int, dst: int, offset: int, size: int) -> None:
    """Spill -> tar without passing the bytes through Python."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, offset + done)
        except OSError:  # a filesystem without it: plain reads and writes
            n = os.write(dst, os.pread(src, min(size - done, 8 << 20), offset + done))
        if n == 0:
            msg = "the spill file ended early"
            raise OSError(msg)
        done += n


class TarRepacker:
    """The writer for ``--layout webdataset``: members -> spill -> one sorted tar."""

    def __init__(self, out: Path, name: str, kinds: frozenset[str], *, durable: bool) -> None:
        self.out, self.name, self.kinds, self.durable = out, name, kinds, durable
        self.tmp = out / f".tmp-{stem(name)}-{secrets.token_hex(4)}"
        self.entries: list[tuple[str, int, int]] = []  # member name, spill offset, size
        self.rows = Rows()
        self.spilled = 0
        self.spill = -1

    def __enter__(self) -> TarRepacker:
        self.tmp.mkdir(parents=True)
        self.spill = os.open(self.tmp / "spill", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.spill >= 0:
            os.close(self.spill)
            self.spill = -1
        shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, member: Member) -> bool:
        """Spill one member; False for names that are not ``sa_<id>.jpg/json`` (skipped)."""
        parsed = member_id(member.name)
        if parsed is None:
            return False
        image_id, kind = parsed
        self.rows.add(image_id, kind, member.data)
        if kind in self.kinds:
            write_all(self.spill, member.data)
            self.entries.append((f"sa_{image_id}.{kind}", self.spilled, len(member.data)))
            self.spilled += len(member.data)
        return True

    def forget(self, ids: set[int]) -> None:
        """Leave these images out of the tar (salvage: not proven whole)."""
        for image_id in ids:
            self.rows.rows.pop(image_id, None)
        keep = [e for e in self.entries if int(e[0][3:].split(".", 1)[0]) not in ids]
        self.entries = keep

    def commit(self, **marker: Any) -> int:
        """Write the sorted tar, move it into place, index it, mark it. Returns images."""
        self.entries.sort()  # plain name order: what `tar --sort=name` gives
        target = self.tmp / "out.tar"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for name, offset, size in self.entries:
                write_all(fd, _header(name, size))
                _copy(self.spill, fd, offset, size)
                if size % BLOCK:
                    write_all(fd, bytes(BLOCK - size % BLOCK))
            write_all(fd, bytes(2 * BLOCK))  # the end-of-archive marker
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        final = self.out / self.name
        clear_way(final, folder=False)
        os.replace(target, final)
        # Freeing a spill of gigabytes takes a while: overlap it with the index and marker.
        dropping = threading.Thread(target=self._drop_spill)
        dropping.start()
        try:
            # Not durable: no fsync here either. On ext4 it would flush the whole tar with the
            # journal; a marker lost or left behind by a power cut is caught by its size.
            sync = self.durable
            write_shard_index(self.out, self.name, self.rows.rows, sync=sync)
            samples = len({name.split(".", 1)[0] for name, _, _ in self.entries})
            size = final.stat().st_size
            write_marker(self.out, self.name, sync=sync, nsamples=samples, filesize=size, **marker)
        finally:
            dropping.join()
        return len(self.rows.rows)

    def _drop_spill(self) -> None:
        os.close(self.spill)
        self.spill = -1
        (self.tmp / "spill").unlink()


def write_wids_index(out: Path, names: list[str]) -> Path | None:
    """``<out>/wids-index.json`` for every marked shard; urls relative to the index."""
    shards = []
    for name in sorted(names):
        marker = read_marker(out, name)
        if marker is None or marker.get("layout") != "webdataset":
            continue
        shards.append(
            {
                "url": name,
                "nsamples": marker["nsamples"],
                "filesize": marker["filesize"],
            }
        )
    if not shards:
        return None
    index = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": "sa1b",
        "shardlist": shards,
    }
    target = out / INDEX_NAME
    atomic_write_text(target, json.dumps(index, indent=1) + "\n")
    return target
