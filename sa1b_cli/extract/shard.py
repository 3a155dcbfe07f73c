"""Extract shards into a sharded layout: atomic per shard, resumable, indexed, never outside --out.

Layouts (``<out>`` defaults to ``<root>/extracted``)::

    shard:  <out>/sa_000000/sa_1.jpg, sa_1.json
    split:  <out>/images/sa_000000/sa_1.jpg, <out>/annotations/sa_000000/sa_1.json
    both:   <out>/index/sa_000000.csv (one row per image), <out>/index.csv (all shards)
            <out>/.done/sa_000000.json  completion marker, written last

A shard is built in ``<out>/.tmp-<shard>-<token>/`` and renamed into place; without its
marker a shard is not extracted, whatever files exist, and the next run redoes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from sa1b_cli.core.archive import (
    GZIP_MAGIC,
    ArchiveError,
    Member,
    Refusal,
    iter_members,
    member_id,
    open_shard,
)
from sa1b_cli.core.files import write_all
from sa1b_cli.core.layouts import Layout, Only, shard_dirs
from sa1b_cli.core.markers import (
    INDEX_GLOB,
    index_rows,
    marked_layout,
    marker_path,
    read_marker,
    stem,
)
from sa1b_cli.core.store import Store, atomic_text_file
from sa1b_cli.core.text import counted, shown
from sa1b_cli.extract.config import ExtractConfig
from sa1b_cli.extract.marks import (
    INDEX_FIELDS,
    InTheWay,
    Rows,
    clear_way,
    write_marker,
    write_shard_index,
)
from sa1b_cli.extract.salvage import Break, Proof, scan_damaged
from sa1b_cli.extract.wds import TarRepacker, write_wids_index

__all__ = [
    "ExtractConfig",
    "ExtractResult",
    "ExtractStatus",
    "extract_one",
]

ExtractStatus = Literal[
    "extracted",
    "present",  # its marker was there: extracted by an earlier run
    "missing",  # no tar on disk: not downloaded
    "partial",  # its download is not finished
    "failed_verification",
    "corrupt_archive",
    "unsafe_members",  # its safe members were written; links, devices or escapes were not
    "no_space",
    "in_the_way",  # a link or file sa1b never makes holds where its output goes
    "busy",  # another process is extracting it
    "interrupted",
    "salvaged",  # --salvage: the members proven whole out of a damaged shard (exit 1)
]
SALVAGEABLE = frozenset({"failed_verification", "corrupt_archive", "partial"})
GOOD_EXTRACT = frozenset({"extracted", "present"})
Progress = Callable[[str, int], None]
MOVE_IT = "move it out of the way, then run the same command"
WRITE_THREADS = 4
MAX_PENDING_WRITES = 64
# Members waiting for a write thread hold their bytes: 64 of up to 64 MiB each made a
# small shard of big, compressible members take GBs.
MAX_PENDING_BYTES = 64 << 20


@dataclass(slots=True)
class ExtractResult:
    name: str
    status: ExtractStatus
    detail: str | None = None
    images: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    refused: list[str] = field(default_factory=list)
    skipped: int = 0
    salvaged: dict[str, Any] | None = None  # --salvage: images kept, seen, lost ids, breaks

    @property
    def ok(self) -> bool:
        return self.status in GOOD_EXTRACT


def kinds_kept(only: Only | None) -> frozenset[str]:
    return frozenset({"images": {"jpg"}, "annotations": {"json"}}.get(only or "", {"jpg", "json"}))


def needed_bytes(tar: Path) -> int:
    """Bytes the shard unpacks to: the gzip ISIZE trailer (mod 2**32) made whole by the size."""
    size = tar.stat().st_size
    with tar.open("rb") as handle:
        if handle.read(2) != GZIP_MAGIC:
            return size
        handle.seek(-4, os.SEEK_END)
        isize = int.from_bytes(handle.read(4), "little")
    floor = int(size * 0.9)  # JPEGs barely compress, so the tar is never much smaller
    while isize < floor:
        isize += 1 << 32
    return isize


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


class _ShardWriter:
    """Writes one shard's members into a temporary folder, then moves it into place.

    Files are created and written by a few threads: creating a file costs ~0.2 ms on
    common filesystems, and 22,000 of them a shard would otherwise serialise with parsing.
    """

    def __init__(self, out: Path, name: str, config: ExtractConfig) -> None:
        self.out, self.name, self.config = out, name, config
        self.tmp = out / f".tmp-{stem(name)}-{secrets.token_hex(4)}"
        self.final_dirs = shard_dirs(out, name, config.layout, config.only)
        tmp_layout = Layout.SHARD if config.layout.shared else config.layout
        self.tmp_dirs = shard_dirs(self.tmp, name, tmp_layout, config.only)
        self.rows = Rows()
        self.pool = ThreadPoolExecutor(max_workers=WRITE_THREADS)
        self.writes: deque[tuple[Future[None], int]] = deque()  # with the bytes each holds
        self.pending = 0  # bytes handed to the write threads and not yet written

    def add(self, result: ExtractResult, member: Member) -> None:
        parsed = member_id(member.name)
        if parsed is None:
            result.skipped += 1  # only sa_<id>.jpg/json become files: no name of its own
            return
        image_id, kind = parsed
        self.rows.add(image_id, kind, member.data)
        folder = self.tmp_dirs.get(kind)
        if folder is not None:
            write = self.pool.submit(_write, folder / f"sa_{image_id}.{kind}", member.data)
            self.writes.append((write, len(member.data)))
            self.pending += len(member.data)
            result.bytes_written += len(member.data)
            while len(self.writes) > MAX_PENDING_WRITES or self.pending > MAX_PENDING_BYTES:
                self._wait_for_oldest()

    def _wait_for_oldest(self) -> None:
        write, size = self.writes.popleft()
        self.pending -= size
        write.result()  # re-raises ENOSPC and friends

    def _wait_for_writes(self) -> None:
        while self.writes:
            self._wait_for_oldest()

    def forget(self, ids: set[int]) -> None:
        """Take back what was written of these images (salvage: not proven whole)."""
        self._wait_for_writes()
        for image_id in ids:
            self.rows.rows.pop(image_id, None)
            for kind, folder in self.tmp_dirs.items():
                (folder / f"sa_{image_id}.{kind}").unlink(missing_ok=True)

    def commit(self, **extra: Any) -> int:
        """Move into place, write the index, then the marker (last). Returns images indexed."""
        self._wait_for_writes()
        if self.config.layout.shared:
            self._move_files()
        else:
            self._move_folders()
        write_shard_index(self.out, self.name, self.rows.rows)
        images = len(self.rows.rows)
        layout, only = self.config.layout, self.config.only
        write_marker(self.out, self.name, layout=layout, only=only, images=images, **extra)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return images

    def _move_folders(self) -> None:
        moves = {self.final_dirs[kind]: self.tmp_dirs[kind] for kind in self.final_dirs}
        for final in moves:  # every one before any moves: the shard appears whole or not at all
            clear_way(final, folder=True)
        for final, tmp in moves.items():  # keyed by destination: "shard" has one folder
            if final.exists():
                shutil.rmtree(final)  # a half shard from an interrupted run
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)

    def _move_files(self) -> None:
        """Folders shared by all shards: file by file (a rerun replaces a half shard's files)."""
        for kind, final in self.final_dirs.items():
            final.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(self.tmp_dirs[kind]):  # this shard's ~11 k files, no more
                if entry.name.endswith(f".{kind}"):
                    os.replace(entry.path, final / entry.name)

    def __enter__(self) -> _ShardWriter:
        for folder in self.tmp_dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for write, _ in self.writes:
            write.cancel()
        self.pool.shutdown(wait=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _marked_whole(out: Path, name: str, only: Only | None) -> bool:
    """The marker is there, holds what was asked, and a repacked tar still has its size.

    A marker of ``--only images`` does not hold the annotations a later run asks for: that
    shard is extracted again. A repacked tar is not fsync'ed while its source is kept (the
    recipe it replaces does not either); after a power cut it may be short: redo it.
    """
    marker = read_marker(out, name)
    if marker is None or marker.get("only") not in (None, only) or marker.get("salvaged"):
        return False
    if marker.get("layout") != "webdataset":
        return True
    try:
        return (out / name).stat().st_size == marker.get("filesize")
    except OSError:
        return False


def _precheck(store: Store, name: str, out: Path, only: Only | None) -> ExtractResult | None:
    if _marked_whole(out, name, only):
        return ExtractResult(name, "present")
    record = store.read(name)
    tar = store.final_path(name)
    salvaged = (read_marker(out, name) or {}).get("salvaged")
    whole_now = record is not None and record.status == "complete" and tar.is_file()
    if isinstance(salvaged, dict) and not whole_now:  # a whole copy replaces it, nothing else
        return ExtractResult(name, "salvaged", _salvaged_detail(salvaged), salvaged=salvaged)
    if record is not None and record.status == "bad":
        return ExtractResult(
            name, "failed_verification", f"{record.detail}; run sa1b download to fetch it again"
        )
    if record is None or record.status != "complete" or not tar.is_file():
        if store.part_path(name).is_file():
            return ExtractResult(name, "partial", "download not finished; run sa1b download")
        return ExtractResult(name, "missing", "not downloaded; run sa1b download")
    need = needed_bytes(tar)
    free = shutil.disk_usage(_existing_parent(out)).free
    if need > free:
        return ExtractResult(
            name, "no_space", f"needs {need / 2**30:.1f} GiB, {out} has {free / 2**30:.1f} GiB free"
        )
    return None


class Aborted(Exception):
    """The run was asked to stop (Ctrl-C); the shard's temporary folder is removed."""


def _members(
    tar: Path, result: ExtractResult, progress: Progress | None, abort: Callable[[], bool]
) -> Iterator[Member]:
    with open_shard(tar) as (stream, counter):
        seen = 0
        for item in iter_members(stream):
            if abort():
                raise Aborted
            if isinstance(item, Refusal):
                result.refused.append(f"{item.name}: {item.reason}")
                continue
            if progress is not None and counter.count - seen >= 8 << 20:
                progress(result.name, counter.count - seen)
                seen = counter.count
            yield item
        result.bytes_read = counter.count
        if progress is not None:
            progress(result.name, counter.count - seen)


def extract_one(
    config: ExtractConfig,
    name: str,
    progress: Progress | None = None,
    abort: Callable[[], bool] = lambda: False,
) -> ExtractResult:
    """Extract one shard (runs in a worker process); every outcome is data."""
    started = time.monotonic()
    store = Store(config.root)
    out = config.out_dir
    early = _precheck(store, name, out, config.only)
    if early is not None and config.salvage and early.status in SALVAGEABLE:
        return _salvage(config, name, store, abort)
    if early is not None:
        return early  # nothing was created for a shard that is not extracted now
    out.mkdir(parents=True, exist_ok=True)
    result = ExtractResult(name, "extracted")
    members = _members(store.final_path(name), result, progress, abort)
    try:
        if config.layout is Layout.WEBDATASET:
            result.images = _repack(out, name, config, members, result)
        else:
            with _ShardWriter(out, name, config) as writer:
                for member in members:
                    writer.add(result, member)
                result.images = writer.commit()
    except Aborted:
        return ExtractResult(name, "interrupted", "stopped; run the same command to redo it")
    except InTheWay as exc:
        return ExtractResult(name, "in_the_way", f"{exc}; {MOVE_IT}")
    except ArchiveError as exc:
        if config.salvage:
            return _salvage(config, name, store, abort)
        hint = "sa1b verify --deep marks it to fetch again; extract --salvage keeps what is whole"
        return ExtractResult(name, "corrupt_archive", f"{exc}; {hint}")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return ExtractResult(name, "no_space", "the disk filled up; nothing of it was kept")
        raise
    if result.refused:  # no SA-1B shard has such members: never counted as extracted
        result.status = "unsafe_members"
        first = shown(result.refused[0])
        result.detail = f"refused {counted(len(result.refused), 'unsafe member')}, first {first}"
        marker_path(out, name).unlink(missing_ok=True)  # a rerun checks and says it again
    if config.delete_tar:
        _delete_tar(store, name)
    result.seconds = time.monotonic() - started
    return result


def _salvage(
    config: ExtractConfig, name: str, store: Store, abort: Callable[[], bool]
) -> ExtractResult:
    """--salvage: write every pair proven whole, mark the shard salvaged (never extracted)."""
    started = time.monotonic()
    source = store.final_path(name)
    if not source.is_file():
        source = store.part_path(name)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    result, proof = ExtractResult(name, "salvaged"), Proof(kinds_kept(config.only))
    breaks: list[Break] = []
    try:
        with _writer(out, name, config) as writer:
            for item in scan_damaged(source):
                if abort():
                    raise Aborted
                if isinstance(item, Break):
                    breaks.append(item)
                elif proof.whole(item):
                    writer.add(result, Member(item.name, item.data))
            kept = proof.kept()
            writer.forget(proof.seen - kept)
            lost = sorted(proof.seen - kept)
            salvaged = {"images": len(kept), "seen": len(proof.seen), "lost": lost}
            salvaged["breaks"] = [[b.at, b.resumed, b.why] for b in breaks]
            result.images = writer.commit(salvaged=salvaged)
    except Aborted:
        return ExtractResult(name, "interrupted", "stopped; run the same command to redo it")
    except InTheWay as exc:
        return ExtractResult(name, "in_the_way", f"{exc}; {MOVE_IT}")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return ExtractResult(name, "no_space", "the disk filled up; nothing of it was kept")
        raise
    result.detail, result.salvaged = _salvaged_detail(salvaged), salvaged
    result.seconds = time.monotonic() - started
    return result


def _salvaged_detail(salvaged: dict[str, Any]) -> str:
    lost = [int(i) for i in salvaged.get("lost", []) if isinstance(i, int)]
    named = ", ".join(f"sa_{i}" for i in lost[:5]) + (", ..." if len(lost) > 5 else "")
    text = f"salvaged {salvaged.get('images', 0):,} of {salvaged.get('seen', 0):,} images"
    text += f"; lost {len(lost):,} ({named})" if lost else "; none of those seen was lost"
    for at, resumed, why in salvaged.get("breaks", [])[:3]:
        text += f"; {shown(str(why), 80)} at byte {at:,}"
        text += f", went on at byte {resumed:,}" if resumed is not None else ""
    return text + "; a whole copy (sa1b download) replaces it"


class _Salvaging(Protocol):
    def add(self, result: ExtractResult, member: Member) -> None: ...
    def forget(self, ids: set[int]) -> None: ...
    def commit(self, **extra: Any) -> int: ...


@contextlib.contextmanager
def _writer(out: Path, name: str, config: ExtractConfig) -> Iterator[_Salvaging]:
    if config.layout is Layout.WEBDATASET:
        with TarRepacker(out, name, kinds_kept(config.only), durable=False) as repacker:
            yield _RepackerAdapter(repacker, config)
    else:
        with _ShardWriter(out, name, config) as writer:
            yield writer


@dataclass(slots=True)
class _RepackerAdapter:
    repacker: TarRepacker
    config: ExtractConfig

    def add(self, result: ExtractResult, member: Member) -> None:
        if self.repacker.add(member):
            result.bytes_written += len(member.data)

    def forget(self, ids: set[int]) -> None:
        self.repacker.forget(ids)

    def commit(self, **extra: Any) -> int:
        return self.repacker.commit(layout=Layout.WEBDATASET, only=self.config.only, **extra)


def _repack(
    out: Path, name: str, config: ExtractConfig, members: Iterator[Member], result: ExtractResult
) -> int:
    durable = config.delete_tar  # the tar will be the only copy: make it durable first
    with TarRepacker(out, name, kinds_kept(config.only), durable=durable) as repacker:
        for member in members:
            if repacker.add(member):
                result.bytes_written += len(member.data)
            else:
                result.skipped += 1
        return repacker.commit(layout=Layout.WEBDATASET, only=config.only)


def _delete_tar(store: Store, name: str) -> None:
    record = store.read(name)
    if record is not None:
        store.write(record.with_(tar_deleted=True, updated=time.time()))
    store.final_path(name).unlink(missing_ok=True)


def _sam2_name(layout: Layout | None, shard: str, image_id: str) -> str:
    """A name as SAM 2's file_list_txt holds it: the path under img_folder, without ".jpg"."""
    if layout is not None and layout.names_with_shard:
        return f"{shard}/sa_{image_id}"
    return f"sa_{image_id}"


def write_overall_index(out: Path) -> Path | None:
    """The lists for the whole output, from the per-shard indexes (never by listing files).

    ``index.csv`` (every image, with its shard), ``sa_images_ids.txt`` (the extracted ids,
    one per line, as EfficientViT-SAM reads them), ``file_list.txt`` (SAM 2's
    ``file_list_txt``: ``sa_000000/sa_1`` for the shard and split layouts, ``sa_1`` for the
    flat ones) and, for webdataset shards, ``wids-index.json``. Rebuilt on each run; None
    when nothing was ever extracted there (a run that extracted nothing creates nothing).
    """
    if not out.is_dir():
        return None
    marked: list[str] = []
    target = out / "index.csv"
    # Streamed, a shard's rows at a time: held in memory, 11 M rows took about 4 GB.
    with atomic_text_file(target) as index:
        index.write("shard," + ",".join(INDEX_FIELDS) + "\n")
        with (
            atomic_text_file(out / "sa_images_ids.txt") as ids,
            atomic_text_file(out / "file_list.txt") as names,
        ):
            for path, layout in _marked_indexes(out):
                marked.append(f"{path.stem}.tar")
                for row in index_rows(path):
                    image_id = row.split(",", 1)[0]
                    index.write(f"{path.stem},{row}\n")
                    ids.write(f"{image_id}\n")
                    names.write(f"{_sam2_name(layout, path.stem, image_id)}\n")
        write_wids_index(out, marked)
    return target


def _marked_indexes(out: Path) -> list[tuple[Path, Layout | None]]:
    """The per-shard indexes of the shards whose extraction is marked done, with the layout
    each marker records."""
    folder = out / "index"
    found = []
    for path in sorted(folder.glob(INDEX_GLOB)) if folder.is_dir() else []:
        if not path.is_file():  # not one sa1b wrote (index_rows would read no rows of it)
            continue
        if (marker := read_marker(out, f"{path.stem}.tar")) is not None:
            found.append((path, marked_layout(marker)))
    return found
