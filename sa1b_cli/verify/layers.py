"""Layered integrity checks -> one result per shard.

Default: present, size as recorded, xxh3-128 as recorded, digests as in --checksums
lists. ``deep``: also the content, in the same read (gzip/tar to the end, safe
member names, image/annotation pairs, JSON schema, RLE pixel counts, JPEG sizes).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sa1b_cli.core.archive import ArchiveError, Member, Refusal, iter_members, member_id, open_shard
from sa1b_cli.core.checksums import (
    ALGORITHMS,
    RECORD_ALGORITHM,
    ChecksumList,
    Hasher,
    format_gnu_line,
)
from sa1b_cli.core.checksums import load_checksum_lists as load_lists
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.procs import die_with_parent
from sa1b_cli.core.selection import Selection
from sa1b_cli.core.store import Record, Store, atomic_write_text
from sa1b_cli.verify.content import ImageCheck, PairInput, check_batch, jpeg_size

__all__ = ["VerifyConfig", "VerifyReport", "VerifyResult", "VerifyStatus", "verify_shards"]

VerifyStatus = Literal[
    "ok",
    "not_covered",  # checks passed, but no list or record vouches for the bytes
    "missing",
    "partial",
    "size_mismatch",
    "digest_mismatch",
    "corrupt_archive",
    "bad_annotation",
]
GOOD_VERIFY = frozenset({"ok", "not_covered"})
BAD_VERIFY = frozenset({"size_mismatch", "digest_mismatch", "corrupt_archive", "bad_annotation"})
HASH_BLOCK = 8 << 20
BATCH = 32


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    root: Path
    selection: Selection
    checksums: tuple[str, ...] = ()
    deep: bool = False
    decode_masks: bool = False
    jobs: int = max(1, os.cpu_count() or 1)
    export: Path | None = None
    export_algo: str = "xxh128"


@dataclass(slots=True)
class VerifyResult:
    name: str
    status: VerifyStatus
    size: int | None = None
    checks: list[str] = field(default_factory=list)
    detail: str | None = None
    digests: dict[str, str] = field(default_factory=dict)
    images: int = 0
    masks: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in GOOD_VERIFY


@dataclass(frozen=True, slots=True)
class VerifyReport:
    results: list[VerifyResult]
    seconds: float
    exported: Path | None = None

    @property
    def exit_code(self) -> int:
        return 0 if all(r.ok for r in self.results) else 1


def _presence(store: Store, name: str) -> VerifyResult | None:
    final = store.final_path(name)
    if final.is_file():
        return None
    record = store.read(name)
    if record is not None and record.tar_deleted:
        return VerifyResult(name, "not_covered", detail="tar deleted after extraction")
    part = store.part_path(name)
    if part.is_file():
        record = store.read(name)
        total = record.expected_size if record else None
        have = record.kept_bytes() if record and record.spans is not None else part.stat().st_size
        pct = f" ({100 * have / total:.1f}%)" if total else ""
        return VerifyResult(
            name, "partial", detail=f"download not finished{pct}; run sa1b download"
        )
    return VerifyResult(name, "missing", detail="not downloaded; run sa1b download")


def _hash_file(path: Path, hashers: dict[str, Hasher], sink: ProgressSink, name: str) -> int:
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    total = 0
    with path.open("rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            chunk = view[:n]
            for hasher in hashers.values():
                hasher.update(chunk)
            total += n
            sink.advanced(name, n)
    return total


def _compare_digests(result: VerifyResult, record: Record | None, lists: ChecksumList) -> None:
    got = result.digests
    if record is not None and RECORD_ALGORITHM in record.digests:
        result.checks.append("xxh128=record")
        if record.digests[RECORD_ALGORITHM] != got[RECORD_ALGORITHM]:
            result.status = "digest_mismatch"
            result.detail = (
                f"xxh128 {got[RECORD_ALGORITHM]} differs from the "
                f"{record.digests[RECORD_ALGORITHM]} recorded at download"
            )
            return
    expected = lists.expected(result.name)
    for alg, want in sorted(expected.items()):
        result.checks.append(f"{alg}=list")
        if got.get(alg) != want:
            result.status = "digest_mismatch"
            result.detail = f"{alg} {got.get(alg)} differs from the list's {want}"
            return
    if lists.entries and not expected:
        result.status = "not_covered"
        result.detail = "no checksum list mentions this shard"
    elif record is None and not expected:
        result.status = "not_covered"
        result.detail = "no download record and no list to compare with"


def _algorithms(config: VerifyConfig, lists: ChecksumList) -> list[str]:
    wanted = {RECORD_ALGORITHM, *lists.algorithms()}
    if config.export is not None:
        wanted.add(config.export_algo)
    return sorted(wanted)


class _Deep:
    """Streams one shard's members and fans the content checks out to worker processes."""

    def __init__(self, pool: Executor, decode: bool, jobs: int) -> None:
        self.pool = pool
        self.decode = decode
        self.window = max(2, 2 * jobs)

    def run(
        self, result: VerifyResult, path: Path, hashers: dict[str, Hasher], sink: ProgressSink
    ) -> str | None:
        jpegs: dict[int, tuple[int, int] | None] = {}
        jsons: dict[int, bytes] = {}
        pending: list[Future[list[ImageCheck]]] = []
        batch: list[PairInput] = []
        checks: list[ImageCheck] = []
        with open_shard(path, hashers.values()) as (stream, counter):
            seen = 0
            for item in iter_members(stream):
                pair = self._pair(item, result, jpegs, jsons)
                if pair is not None:
                    batch.append(pair)
                if len(batch) >= BATCH:
                    pending.append(self.pool.submit(check_batch, batch, self.decode))
                    batch = []
                    checks += self._drain(pending, self.window)
                sink.advanced(result.name, counter.count - seen)
                seen = counter.count
            while counter.read(HASH_BLOCK):  # the digest covers bytes after the tar's end too
                pass
        if batch:
            pending.append(self.pool.submit(check_batch, batch, self.decode))
        checks += self._drain(pending, 0)
        return self._conclude(result, jpegs, jsons, checks)

    @staticmethod
    def _pair(
        item: Member | Refusal,
        result: VerifyResult,
        jpegs: dict[int, tuple[int, int] | None],
        jsons: dict[int, bytes],
    ) -> PairInput | None:
        """File the member; once its partner is here too, return the pair (order is random)."""
        if isinstance(item, Refusal):
            msg = f"unsafe member {item.name!r}: {item.reason}"
            raise ArchiveError(msg)
        parsed = member_id(item.name)
        if parsed is None:
            result.warnings[f"unexpected member {item.name}"[:80]] += 1
            return None
        image_id, kind = parsed
        if kind == "jpg":
            jpegs[image_id] = jpeg_size(item.data)
        else:
            jsons[image_id] = item.data
        if image_id in jpegs and image_id in jsons:
            return PairInput(image_id, jpegs.pop(image_id), jsons.pop(image_id))
        return None

    @staticmethod
    def _drain(pending: list[Future[list[ImageCheck]]], keep: int) -> list[ImageCheck]:
        done: list[ImageCheck] = []
        while len(pending) > keep:
            done += pending.pop(0).result()
        return done

    @staticmethod
    def _conclude(
        result: VerifyResult,
        jpegs: dict[int, tuple[int, int] | None],
        jsons: dict[int, bytes],
        checks: list[ImageCheck],
    ) -> str | None:
        result.checks += ["gzip+tar", "pairs", "json", "rle", "jpeg"]
        result.images = len(checks)
        result.masks = sum(c.masks for c in checks)
        for check in checks:
            result.warnings.update(check.warnings)
        problems = [f"sa_{c.image_id}: {e}" for c in checks for e in c.errors]
        problems += [f"sa_{i}.jpg has no sa_{i}.json" for i in sorted(jpegs)]
        problems += [f"sa_{i}.json has no sa_{i}.jpg" for i in sorted(jsons)]
        if not problems:
            return None
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return problems[0] + more


def _read_and_check(
    result: VerifyResult, path: Path, algorithms: list[str], deep: _Deep | None, sink: ProgressSink
) -> tuple[VerifyStatus, str] | None:
    """Hash the file (and check its content when deep); returns a content problem, if any."""
    hashers = {alg: ALGORITHMS[alg]() for alg in algorithms}
    problem: tuple[VerifyStatus, str] | None = None
    if deep is None:
        _hash_file(path, hashers, sink, result.name)
    else:
        try:
            bad = deep.run(result, path, hashers, sink)
            problem = ("bad_annotation", bad) if bad else None
        except ArchiveError as exc:
            problem = ("corrupt_archive", str(exc))
            # The stream stopped early: hash every byte so the digest verdict stands.
            hashers = {alg: ALGORITHMS[alg]() for alg in algorithms}
            _hash_file(path, hashers, NullSink(), result.name)
    result.digests = {alg: h.hexdigest() for alg, h in hashers.items()}
    return problem


def _verify_one(
    store: Store,
    name: str,
    config: VerifyConfig,
    lists: ChecksumList,
    deep: _Deep | None,
    sink: ProgressSink,
) -> VerifyResult:
    started = time.monotonic()
    missing = _presence(store, name)
    if missing is not None:
        return missing
    record = store.read(name)
    path = store.final_path(name)
    result = VerifyResult(name, "ok", size=path.stat().st_size, checks=["present"])
    sink.started(name, result.size, 0)
    if record is not None and record.size is not None:
        result.checks.append("size")
        if result.size != record.size:
            result.status = "size_mismatch"
            result.detail = f"{result.size:,} bytes on disk, {record.size:,} recorded at download"
            return result
    problem = _read_and_check(result, path, _algorithms(config, lists), deep, sink)
    _compare_digests(result, record, lists)
    if problem is not None and result.status != "digest_mismatch":
        result.status, result.detail = problem
    result.seconds = time.monotonic() - started
    return result


def _remember(store: Store, result: VerifyResult) -> None:
    """Bad copies are marked so the next download fetches them again; good strays are adopted."""
    record = store.read(result.name)
    if result.status in BAD_VERIFY:
        base = record or Record(result.name, "bad")
        store.write(
            base.with_(status="bad", detail=f"verify: {result.detail}", updated=time.time())
        )
    elif result.ok and record is None and result.status == "ok":
        store.write(
            Record(
                result.name,
                "complete",
                size=result.size,
                expected_size=result.size,
                digests=dict(result.digests),
                durable_bytes=result.size or 0,
                updated=time.time(),
            )
        )


def _export(path: Path, algo: str, results: list[VerifyResult]) -> Path:
    lines = [
        format_gnu_line(algo, r.digests[algo], r.name)
        for r in results
        if r.ok and algo in r.digests
    ]
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return path


def verify_shards(config: VerifyConfig, *, sink: ProgressSink | None = None) -> VerifyReport:
    """Verify the selected shards of ``config.root``; one result per shard, never raises for one."""
    sink = sink or NullSink()
    started = time.monotonic()
    store = Store(config.root)
    lists = load_lists(config.checksums) if config.checksums else ChecksumList({})
    names = config.selection.apply(store.known_names())
    finals = [store.final_path(n) for n in names]
    sink.planned(sum(p.stat().st_size for p in finals if p.is_file()))
    results: list[VerifyResult] = []
    pool: Executor
    if config.deep:
        pool = ProcessPoolExecutor(max_workers=config.jobs, initializer=die_with_parent)
    else:
        pool = ThreadPoolExecutor(max_workers=config.jobs)
    with pool:
        if config.deep:
            deep = _Deep(pool, config.decode_masks, config.jobs)
            for name in names:
                results.append(_verify_one(store, name, config, lists, deep, sink))
                sink.finished(results[-1])
        else:
            futures = [pool.submit(_verify_one, store, n, config, lists, None, sink) for n in names]
            for future in futures:
                results.append(future.result())
                sink.finished(results[-1])
    if any(r.status != "missing" for r in results):
        store.ensure()  # a root of hand-placed tars has no state/ yet
    for result in results:
        _remember(store, result)
    exported = _export(config.export, config.export_algo, results) if config.export else None
    return VerifyReport(results, time.monotonic() - started, exported)
