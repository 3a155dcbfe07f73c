"""Layered integrity checks -> one result per shard.

Default: present, size as recorded, xxh3-128 as recorded, digests as in --checksums
lists. ``deep``: also the content, in the same read (gzip/tar to the end, safe
member names, image/annotation pairs, JSON schema, RLE pixel counts, JPEG sizes).
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sa1b_cli.core.checksums import (
    ALGORITHMS,
    RECORD_ALGORITHM,
    ChecksumList,
    Hasher,
    format_gnu_line,
)
from sa1b_cli.core.checksums import load_checksum_lists as load_lists
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.known import MIRRORS, KnownList, load_known, remember_mismatch
from sa1b_cli.core.results import exit_code
from sa1b_cli.core.store import Record, Store, atomic_write_text
from sa1b_cli.core.text import shown
from sa1b_cli.verify.config import VerifyConfig

if TYPE_CHECKING:  # --deep alone needs these; a plain verify should not pay their import
    from sa1b_cli.core.archive import Member, Refusal
    from sa1b_cli.core.content import AnnotationInput, ImageCheck

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
    "disputed",  # a fresh copy disagrees with the community list too: reported, not refetched
]
GOOD_VERIFY = frozenset({"ok", "not_covered"})
BAD_VERIFY = frozenset({"size_mismatch", "digest_mismatch", "corrupt_archive", "bad_annotation"})
HASH_BLOCK = 8 << 20
MAP_WINDOW = 16 << 20  # hashed per step; the next one is faulted in meanwhile (see _Populate)
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; Python 3.13 names it
BATCH = 32
# A batch is also sent once it holds this many bytes: annotations of up to 64 MiB each,
# 32 at a time and pickled to a worker, took a 7 MB shard's check to 4.9 GB.
BATCH_BYTES = 4 << 20
IN_FLIGHT_BYTES = 16 << 20  # annotation bytes sent to workers and not yet checked, at most


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
        return exit_code(self.results)


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


def _hash_file(
    path: Path, hashers: dict[str, Hasher], sink: ProgressSink, name: str, *, ahead: bool = False
) -> int:
    """Hash through a read-only mapping: no copy into a buffer, half the system time of read().

    ``ahead``: a helper thread faults in the next window while this one hashes (worth it
    when fewer files are hashed than there are cores; with every core busy it only adds
    contention).
    """
    size = path.stat().st_size
    if size == 0:
        return 0
    try:
        with path.open("rb") as handle:
            mapped = mmap.mmap(handle.fileno(), size, prot=mmap.PROT_READ)
    except (OSError, ValueError):  # a filesystem that cannot map: plain reads
        return _read_file(path, hashers, sink, name)
    with mapped, contextlib.ExitStack() as stack:
        view = stack.enter_context(memoryview(mapped))
        populate = _Populate(mapped, stack) if ahead else None
        if populate is None:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        for start in range(0, size, MAP_WINDOW):
            end = min(size, start + MAP_WINDOW)
            if populate is not None:
                populate.window(start, end, size)
            chunk = view[start:end]
            for hasher in hashers.values():
                hasher.update(chunk)
            chunk.release()
            sink.advanced(name, end - start)
    return size


class _Populate:
    """Faults in the window after the one being hashed, on its own thread."""

    def __init__(self, mapped: mmap.mmap, stack: contextlib.ExitStack) -> None:
        self.mapped = mapped
        self.pool = stack.enter_context(ThreadPoolExecutor(1))
        self.pending: Future[None] | None = None

    def _advise(self, start: int, end: int) -> None:
        with contextlib.suppress(OSError):  # kernels before 5.14 lack MADV_POPULATE_READ
            self.mapped.madvise(MADV_POPULATE_READ, start, end - start)

    def window(self, start: int, end: int, size: int) -> None:
        if self.pending is None:
            self._advise(start, end)
        else:
            self.pending.result()
        if end < size:
            self.pending = self.pool.submit(self._advise, end, min(size, end + MAP_WINDOW))


def _read_file(path: Path, hashers: dict[str, Hasher], sink: ProgressSink, name: str) -> int:
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


@dataclass(frozen=True, slots=True)
class _Refs:
    """What the bytes are compared with: the record, --checksums lists, the community list."""

    root: Path
    lists: ChecksumList
    known: KnownList | None = None

    def known_md5(self, name: str) -> str | None:
        return self.known.md5.get(name) if self.known is not None else None


def _recorded_md5(record: Record | None) -> str | None:
    """The md5 recorded beside an xxh128: once the xxh128 matches, it is these bytes' md5."""
    if record is None or RECORD_ALGORITHM not in record.digests:
        return None
    return record.digests.get("md5")


def _compare_digests(result: VerifyResult, record: Record | None, refs: _Refs) -> None:
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
        if "md5" not in got and (md5 := _recorded_md5(record)):
            got["md5"] = md5
    expected = dict(refs.lists.expected(result.name))
    community = refs.known_md5(result.name)
    if community and expected.get("md5", community) != community:
        del expected["md5"]  # the community list came from Meta's CDN; mirrors' lists lose
        result.warnings["your --checksums md5 differs from the community list, which wins"] += 1
    for alg, want in sorted(expected.items()):
        result.checks.append(f"{alg}=list")
        if got.get(alg) != want:
            result.status = "digest_mismatch"
            result.detail = f"{alg} {got.get(alg)} differs from the list's {want}"
            return
    if community:
        _compare_known(result, refs)
    elif refs.lists.entries and not expected:
        result.status = "not_covered"
        result.detail = "no checksum list mentions this shard"
    elif record is None and not expected:
        result.status = "not_covered"
        result.detail = "no download record and no list to compare with"


def _compare_known(result: VerifyResult, refs: _Refs) -> None:
    assert refs.known is not None
    md5, want = result.digests["md5"], refs.known.md5[result.name]
    result.checks.append("md5=community")
    verdict = refs.known.judge(result.name, md5)
    if verdict == "match":
        return
    result.status = "digest_mismatch"
    mtime = refs.root.joinpath("tars", result.name).stat().st_mtime_ns
    again = remember_mismatch(refs.root, result.name, md5, mtime)
    if verdict == "mirror_bad":
        where = "your links point at a mirror: use" if again else "fetch this shard from"
        result.detail = (
            f"md5 {md5} is the known-bad copy from {MIRRORS}: its gzip/tar stream is broken. "
            f"{where.capitalize()} Meta's links (sa1b download with a fresh manifest)."
        )
        return
    if again:
        result.status = "disputed"
        result.detail = (
            f"a fresh copy disagrees with the community list too (md5 {md5}, list {want}): "
            "Meta may have re-uploaded this shard after the list was made, so sa1b will not "
            "fetch it again. verify --deep checks its content; --no-known skips the list."
        )
        return
    result.detail = (
        f"md5 {md5} differs from the community list's {want} (computed from Meta's CDN): "
        "this copy is damaged or not Meta's. The next sa1b download fetches it again."
    )


def _algorithms(config: VerifyConfig, refs: _Refs, name: str, record: Record | None) -> list[str]:
    wanted = {RECORD_ALGORITHM, *refs.lists.algorithms()}
    if config.export is not None:
        wanted.add(config.export_algo)
    if refs.known_md5(name) and not _recorded_md5(record):
        wanted.add("md5")  # once computed it is recorded, and later runs skip it
    return sorted(wanted)


def _process_pool(jobs: int) -> Executor:
    from concurrent.futures import ProcessPoolExecutor

    from sa1b_cli.core.procs import die_with_parent

    return ProcessPoolExecutor(max_workers=jobs, initializer=die_with_parent)


class _Deep:
    """Streams one shard's members and fans the content checks out to worker processes."""

    def __init__(self, make_pool: Callable[[], Executor], decode: bool, jobs: int) -> None:
        self.make_pool = make_pool
        self.pool = make_pool()
        self.decode = decode
        self.window = max(2, 2 * jobs)

    def run(
        self, result: VerifyResult, path: Path, hashers: dict[str, Hasher], sink: ProgressSink
    ) -> str | None:
        """A content problem, if any; a worker that dies fails this shard, never the run."""
        from concurrent.futures.process import BrokenProcessPool

        from sa1b_cli.core.archive import ArchiveError

        try:
            return self._run(result, path, hashers, sink)
        except BrokenProcessPool as exc:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self.make_pool()  # a fresh one for the shards after it
            msg = "a worker checking its content died (a crafted member?)"
            raise ArchiveError(msg) from exc

    def _run(
        self, result: VerifyResult, path: Path, hashers: dict[str, Hasher], sink: ProgressSink
    ) -> str | None:
        from sa1b_cli.core.archive import iter_members, open_shard
        from sa1b_cli.core.content import check_batch

        jpegs: dict[int, tuple[int, int] | None] = {}  # sizes from the headers, by image id
        pending: list[tuple[Future[list[ImageCheck]], int]] = []  # with the bytes each holds
        batch: list[AnnotationInput] = []
        checks: list[ImageCheck] = []
        held = 0  # bytes of the batch being filled
        with open_shard(path, hashers.values()) as (stream, counter):
            seen = 0
            for item in iter_members(stream):
                annotation = self._file(item, result, jpegs)
                if annotation is not None:
                    batch.append(annotation)
                    held += len(annotation.annotation)
                if len(batch) >= BATCH or held >= BATCH_BYTES:
                    pending.append((self.pool.submit(check_batch, batch, self.decode), held))
                    batch, held = [], 0
                    checks += self._drain(pending, self.window)
                sink.advanced(result.name, counter.count - seen)
                seen = counter.count
            while counter.read(HASH_BLOCK):  # the digest covers bytes after the tar's end too
                pass
        if batch:
            pending.append((self.pool.submit(check_batch, batch, self.decode), held))
        checks += self._drain(pending, 0)
        return self._conclude(result, jpegs, checks)

    @staticmethod
    def _file(
        item: Member | Refusal, result: VerifyResult, jpegs: dict[int, tuple[int, int] | None]
    ) -> AnnotationInput | None:
        """Keep a JPEG's size; an annotation is checked at once (its JPEG may come last)."""
        from sa1b_cli.core.archive import ArchiveError, Refusal, member_id
        from sa1b_cli.core.content import AnnotationInput, jpeg_size

        if isinstance(item, Refusal):
            msg = f"unsafe member {item.name!r}: {item.reason}"
            raise ArchiveError(msg)
        parsed = member_id(item.name)
        if parsed is None:
            result.warnings[f"unexpected member {shown(item.name, 60)}"] += 1
            return None
        image_id, kind = parsed
        if kind == "jpg":
            jpegs[image_id] = jpeg_size(item.data)
            return None
        return AnnotationInput(image_id, item.data)

    @staticmethod
    def _drain(pending: list[tuple[Future[list[ImageCheck]], int]], keep: int) -> list[ImageCheck]:
        """Results of the oldest batches, until at most ``keep`` and ``IN_FLIGHT_BYTES`` wait."""
        done: list[ImageCheck] = []
        while len(pending) > keep or sum(size for _, size in pending) > IN_FLIGHT_BYTES:
            done += pending.pop(0)[0].result()
        return done

    @staticmethod
    def _conclude(
        result: VerifyResult, jpegs: dict[int, tuple[int, int] | None], checks: list[ImageCheck]
    ) -> str | None:
        from sa1b_cli.core.content import jpeg_problem

        result.checks += ["gzip+tar", "pairs", "json", "rle", "jpeg"]
        annotated = {c.image_id for c in checks}
        result.images = len(annotated & jpegs.keys())
        result.masks = sum(c.masks for c in checks)
        problems = []
        for check in checks:
            result.warnings.update(check.warnings)
            problems += [f"sa_{check.image_id}: {e}" for e in check.errors]
            if check.image_id in jpegs and check.size is not None:
                jpeg = jpeg_problem(jpegs[check.image_id], check.size)
                problems += [f"sa_{check.image_id}: {jpeg}"] if jpeg else []
        problems += [f"sa_{i}.jpg has no sa_{i}.json" for i in sorted(jpegs.keys() - annotated)]
        problems += [f"sa_{i}.json has no sa_{i}.jpg" for i in sorted(annotated - jpegs.keys())]
        if not problems:
            return None
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return problems[0] + more


def _read_and_check(
    result: VerifyResult,
    path: Path,
    algorithms: list[str],
    deep: _Deep | None,
    sink: ProgressSink,
    ahead: bool,
) -> tuple[VerifyStatus, str] | None:
    """Hash the file (and check its content when deep); returns a content problem, if any."""
    hashers = {alg: ALGORITHMS[alg]() for alg in algorithms}
    problem: tuple[VerifyStatus, str] | None = None
    if deep is None:
        _hash_file(path, hashers, sink, result.name, ahead=ahead)
    else:
        from sa1b_cli.core.archive import ArchiveError

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
    refs: _Refs,
    deep: _Deep | None,
    sink: ProgressSink,
    ahead: bool = False,
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
    algorithms = _algorithms(config, refs, name, record)
    problem = _read_and_check(result, path, algorithms, deep, sink, ahead)
    _compare_digests(result, record, refs)
    if problem is not None and result.status != "digest_mismatch":
        result.status, result.detail = problem
    result.seconds = time.monotonic() - started
    return result


def _remember(store: Store, result: VerifyResult) -> None:
    """Bad copies are marked so the next download fetches them again; good strays are adopted.

    A good copy's record learns what it was checked against (and its md5, so the next
    check against the community list needs only the fast xxh128 pass).
    """
    record = store.read(result.name)
    checked = [c for c in result.checks if "=" in c]
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
                checked=checked,
                checked_at=time.time(),
            )
        )
    elif result.status == "disputed" and record is not None:
        store.write(record.with_(detail="disputed: two copies differ from the community md5"))
    elif result.ok and record is not None and record.status == "complete":
        digests = {**record.digests, **result.digests}
        if digests != record.digests or checked != record.checked:  # else: no fsync needed
            store.write(record.with_(digests=digests, checked=checked, checked_at=time.time()))


def _export(path: Path, algo: str, results: list[VerifyResult]) -> Path:
    lines = [
        format_gnu_line(algo, r.digests[algo], r.name)
        for r in results
        if r.ok and algo in r.digests
    ]
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return path


def verify_shards(
    config: VerifyConfig,
    *,
    sink: ProgressSink | None = None,
    fetch_list: Callable[[str], bytes] | None = None,
) -> VerifyReport:
    """Verify the selected shards of ``config.root``; one result per shard, never raises for one.

    Raises only for the run: an unreadable --checksums list, or ``known=True`` when the
    community list can be neither fetched nor found in the cache.
    """
    sink = sink or NullSink()
    started = time.monotonic()
    store = Store(config.root)
    lists = load_lists(config.checksums) if config.checksums else ChecksumList({})
    names = config.selection.apply(store.known_names())
    known = load_known(config.root, config.known if names else False, get=fetch_list)
    refs = _Refs(config.root, lists, known)
    ahead = len(names) < (os.cpu_count() or 1)
    finals = [store.final_path(n) for n in names]
    sink.planned(sum(p.stat().st_size for p in finals if p.is_file()))
    results: list[VerifyResult] = []
    if config.deep:
        deep = _Deep(
            functools.partial(_process_pool, config.jobs), config.decode_masks, config.jobs
        )
        try:
            for name in names:
                results.append(_verify_one(store, name, config, refs, deep, sink))
                sink.finished(results[-1])
        finally:
            deep.pool.shutdown(cancel_futures=True)
    else:
        with ThreadPoolExecutor(max_workers=config.jobs) as pool:
            futures = [
                pool.submit(_verify_one, store, n, config, refs, None, sink, ahead) for n in names
            ]
            try:
                for future in futures:
                    results.append(future.result())
                    sink.finished(results[-1])
            except BaseException:  # Ctrl-C, scancel: drop the queue, finish only what runs
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    if any(r.status != "missing" for r in results):
        store.ensure()  # a root of hand-placed tars has no state/ yet
    for result in results:
        _remember(store, result)
    exported = _export(config.export, config.export_algo, results) if config.export else None
    return VerifyReport(results, time.monotonic() - started, exported)
