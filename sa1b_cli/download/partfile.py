"""The ``.part`` file of one shard: append, hash while writing, checkpoint, reset."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from sa1b_cli.core.checksums import ALGORITHMS, Hasher

__all__ = ["PartFile"]

_REHASH_BLOCK = 8 << 20


def _update_all(hashers: Iterable[Hasher], block: bytes) -> None:
    for hasher in hashers:
        hasher.update(block)


def _write_and_hash(fd: int, chunks: list[bytes], hashers: Iterable[Hasher]) -> None:
    """One writev per block (no join copy), then the digests of exactly those bytes."""
    pending = chunks
    while pending:
        written = os.writev(fd, pending)
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending = pending[1:]
        if written:  # a short write inside a chunk
            pending = [pending[0][written:], *pending[1:]]
    for chunk in chunks:
        _update_all(hashers, chunk)


class PartFile:
    """Bytes received so far, with the digests of exactly those bytes.

    One block at a time is written (and hashed) by a worker thread while the next one
    arrives from the network; every operation that needs the bytes on disk drains it.
    """

    def __init__(self, path: Path, algorithms: Iterable[str]) -> None:
        self.path = path
        self.algorithms = tuple(dict.fromkeys(algorithms))
        self.size = 0  # bytes written or being written
        self.hashers: dict[str, Hasher] = {}
        self._fd: int | None = None
        self._pending: asyncio.Future[None] | None = None

    async def open(self, *, keep: int) -> PartFile:
        """Open, keeping the first ``keep`` bytes (the last durable checkpoint) and hashing them."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        current = os.fstat(self._fd).st_size
        # Bytes past the last fsync'ed checkpoint may be garbage after a power cut.
        self.size = min(keep, current)
        os.ftruncate(self._fd, self.size)
        os.lseek(self._fd, self.size, os.SEEK_SET)
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

    async def append(self, chunks: list[bytes]) -> None:
        """Queue a block behind the previous one; errors surface at the next drain."""
        assert self._fd is not None
        await self.drain()
        hashers = list(self.hashers.values())
        self._pending = asyncio.ensure_future(
            asyncio.to_thread(_write_and_hash, self._fd, chunks, hashers)
        )
        self.size += sum(len(c) for c in chunks)

    async def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def sync(self) -> None:
        assert self._fd is not None
        await self.drain()
        await asyncio.to_thread(os.fsync, self._fd)

    async def reset(self) -> None:
        """Drop every byte: the server ignored our Range or the content was wrong."""
        assert self._fd is not None
        await self.drain()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.size = 0
        self.hashers = {alg: ALGORITHMS[alg]() for alg in self.algorithms}

    async def digests(self) -> dict[str, str]:
        await self.drain()
        return {alg: hasher.hexdigest() for alg, hasher in self.hashers.items()}

    async def close(self) -> None:
        try:
            await self.drain()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    async def __aenter__(self) -> PartFile:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
