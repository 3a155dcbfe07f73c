"""Durability of one shard: what a record vouches for, a size that never changes, finalising."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import xxhash

from sa1b_cli.core.manifest import ManifestRow
from sa1b_cli.core.store import Store
from sa1b_cli.download.durable import ShardFile, SizeChanged
from sa1b_cli.download.plan import SpanSet

NAME = "sa_000001.tar"
DATA = bytes(range(256)) * 64  # 16 KiB


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Writes:
    """Blocks written as a receiving thread writes them: lent, written, landed."""

    def __init__(self, ledger: ShardFile) -> None:
        self.ledger = ledger

    async def write_at(self, offset: int, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        block = self.ledger.block(offset, len(data))
        await asyncio.to_thread(block.write, memoryview(data))
        block.landed(None)

    @property
    def path(self) -> Path:
        return self.ledger.part.path

    async def close(self) -> None:
        await self.ledger.part.close()


async def ledger_for(tmp_path: Path, clock: Clock) -> tuple[ShardFile, Writes, Store]:
    store = Store(tmp_path).ensure()
    row = ManifestRow(NAME, "https://cdn.example/x/sa_000001.tar?oh=SECRET", "shard", 2, None)
    ledger = ShardFile(
        store, row, ["xxh128"], claim=None, monotonic=clock, wall_clock=clock,
        every_bytes=10 << 10, every_seconds=2.0,
    )  # fmt: skip
    await ledger.open(SpanSet())
    return ledger, Writes(ledger), store


async def test_a_record_vouches_only_for_bytes_written_before_its_fsync(tmp_path: Path):
    clock = Clock()
    ledger, part, store = await ledger_for(tmp_path, clock)
    await part.write_at(0, [DATA[:4096]])
    await part.write_at(8192, [DATA[8192:12288]])
    assert not ledger.due()  # 8 KiB written; a checkpoint is due every 10 KiB or 2 s
    await part.write_at(4096, [DATA[4096:8192]])
    assert ledger.due()
    await ledger.checkpoint()
    record = store.read(NAME)
    assert record is not None and record.status == "partial"
    assert record.spans == [[0, 12288]] and "SECRET" not in str(record)
    assert not ledger.due()
    clock.now += 2.0
    assert ledger.due()  # by time
    await part.close()


async def test_a_size_is_fixed_once_known(tmp_path: Path):
    ledger, part, store = await ledger_for(tmp_path, Clock())
    await ledger.learn_size(len(DATA))
    await ledger.learn_size(len(DATA))  # the same again: fine
    record = store.read(NAME)
    assert record is not None and record.expected_size == len(DATA)
    with pytest.raises(SizeChanged, match=r"now says 64\.0 KiB; it said 16\.0 KiB before"):
        await ledger.learn_size(64 << 10)
    await part.close()


async def test_finalise_checks_size_and_digest_then_moves_into_place(tmp_path: Path):
    ledger, part, store = await ledger_for(tmp_path, Clock())
    ledger.expected_size = len(DATA)
    await part.write_at(0, [DATA[:-1]])
    problem = await ledger.finalise({})
    assert problem is not None and "differs" in problem
    await part.write_at(len(DATA) - 1, [DATA[-1:]])
    problem = await ledger.finalise({"xxh128": "0" * 32})
    assert problem is not None and "mismatch" in problem
    assert not store.final_path(NAME).exists()
    digest = xxhash.xxh3_128(DATA).hexdigest()
    assert await ledger.finalise({"xxh128": digest}, {"xxh128": "list"}) is None
    assert store.final_path(NAME).read_bytes() == DATA and not part.path.exists()
    record = store.read(NAME)
    assert record is not None and record.status == "complete" and record.size == len(DATA)
    assert record.digests["xxh128"] == digest and record.checked == ["xxh128=list"]
    await part.close()


async def test_starting_over_drops_every_byte_on_disk_and_in_the_record(tmp_path: Path):
    ledger, part, store = await ledger_for(tmp_path, Clock())
    await part.write_at(0, [DATA])
    await ledger.checkpoint(force=True)
    await ledger.start_over()
    record = store.read(NAME)
    assert record is not None and record.spans == [] and part.path.stat().st_size == 0
    await part.close()
