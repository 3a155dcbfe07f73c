"""The ``.part`` file of one shard: append, hash while writing, checkpoint, reset."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from sa1b_cli.checksums import ALGORITHMS, Hasher

__all__ = ["PartFile"]

_REHASH_BLOCK = 8 << 20


def _update_all(hashers: Iterable[Hasher], block: bytes) -> None:
    for hasher in hashers:
        hasher.update(block)


class PartFile:
    """Bytes received so far, with the digests of exactly those bytes."""

    def __init__(self, path: Path, algorithms: Iterable[str]) -> None:
        self.path = path
        self.algorithms = tuple(dict.fromkeys(algorithms))
        self.size = 0
        self.hashers: dict[str, Hasher] = {}
        self._file: AsyncBufferedIOBase | None = None

    async def open(self, *, keep: int) -> PartFile:
        """Open, keeping the first ``keep`` bytes (the last durable checkpoint) and hashing them."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        os.close(fd)
        self._file = await aiofiles.open(self.path, "r+b")
        current = os.path.getsize(self.path)
        # Bytes past the last fsync'ed checkpoint may be garbage after a power cut.
        self.size = min(keep, current)
        await self._file.truncate(self.size)
        await self._file.seek(self.size)
        self.hashers = {alg: ALGORITHMS[alg]() for alg in self.algorithms}
        if self.size:
            await asyncio.to_thread(self._rehash_prefix)
        return self

    def _rehash_prefix(self) -> None:
        with open(self.path, "rb") as handle:
            remaining = self.size
            while remaining:
                block = handle.read(min(_REHASH_BLOCK, remaining))
                if not block:
                    break
                _update_all(self.hashers.values(), block)
                remaining -= len(block)

    async def append(self, block: bytes) -> None:
        assert self._file is not None
        # Hash in a worker thread while another writes: md5/sha256 release the GIL.
        await asyncio.gather(
            self._file.write(block), asyncio.to_thread(_update_all, self.hashers.values(), block)
        )
        self.size += len(block)

    async def sync(self) -> None:
        assert self._file is not None
        await self._file.flush()
        await asyncio.to_thread(os.fsync, self._file.fileno())

    async def reset(self) -> None:
        """Drop every byte: the server ignored our Range or the content was wrong."""
        assert self._file is not None
        await self._file.truncate(0)
        await self._file.seek(0)
        self.size = 0
        self.hashers = {alg: ALGORITHMS[alg]() for alg in self.algorithms}

    def digests(self) -> dict[str, str]:
        return {alg: hasher.hexdigest() for alg, hasher in self.hashers.items()}

    async def close(self) -> None:
        if self._file is not None:
            await self._file.close()
            self._file = None

    async def __aenter__(self) -> PartFile:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
