"""Run extraction over many shards in worker processes, with progress, claims and Ctrl-C."""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from sa1b_cli.core.claims import Claim, try_claim
from sa1b_cli.core.errors import DiskFullError, UsageError
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.layouts import Layout
from sa1b_cli.core.markers import marked_layout, read_marker, stem
from sa1b_cli.core.procs import die_with_parent
from sa1b_cli.core.results import exit_code
from sa1b_cli.core.store import Store
from sa1b_cli.core.text import shown
from sa1b_cli.extract.config import ExtractConfig
from sa1b_cli.extract.shard import ExtractResult, extract_one, write_overall_index

__all__ = ["ExtractReport", "Extractor", "extract_shards"]

FILES_PER_SHARD = 22_400  # about 11,200 images, a JPEG and a JSON each
FLAT_WARN = 1_000_000
FLAT_REFUSE = 15_000_000  # Lustre's limit for one directory, about

_progress: Any = None
_abort: Event | None = None


@dataclass(frozen=True, slots=True)
class ExtractReport:
    results: list[ExtractResult]
    seconds: float
    index: Path | None
    warnings: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)


def _init_worker(progress: Any, abort: Event) -> None:
    global _progress, _abort
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; we stop via `abort`
    _progress, _abort = progress, abort


def _report(name: str, nbytes: int) -> None:
    if _progress is not None:
        _progress.put((name, nbytes))


def _aborted() -> bool:
    return _abort is not None and _abort.is_set()


def _extract_claimed(config: ExtractConfig, name: str) -> ExtractResult:
    store = Store(config.root)
    if not store.final_path(name).is_file():  # reported as such, and nothing is created
        return extract_one(config, name, _report, _aborted)
    store.ensure()
    got = try_claim(store.claims / f"{name}.extract.claim")
    if not isinstance(got, Claim):
        return ExtractResult(name, "busy", f"being extracted by {got.describe()}")
    try:
        out = config.out_dir
        if out.is_dir():  # leftovers of a run killed while it held this claim
            for stale in out.glob(f".tmp-{stem(name)}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        return extract_one(config, name, _report, _aborted)
    finally:
        got.release()


class Extractor:
    """A pool of extraction processes; submit shards, poll progress, stop on request."""

    def __init__(self, config: ExtractConfig, sink: ProgressSink | None = None) -> None:
        _layout_check(config.out_dir, config.layout)  # before any download or worker starts
        context = multiprocessing.get_context("fork")
        self.config = config
        self.sink = sink or NullSink()
        self.progress: Any = context.Queue()
        self.abort = context.Event()
        self.pool = ProcessPoolExecutor(
            max_workers=config.jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self.progress, self.abort),
        )

    def submit(self, name: str) -> Future[ExtractResult]:
        return self.pool.submit(_extract_claimed, self.config, name)

    def pump(self, timeout: float = 0.1) -> None:
        """Move worker progress to the sink (call from the thread that owns the sink)."""
        try:
            name, nbytes = self.progress.get(timeout=timeout)
            self.sink.advanced(name, nbytes)
            while True:
                name, nbytes = self.progress.get_nowait()
                self.sink.advanced(name, nbytes)
        except queue.Empty:
            return

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.progress.close()
        self.progress.join_thread()


def _collect(
    extractor: Extractor, futures: dict[Future[ExtractResult], str], stop: Callable[[], bool]
) -> list[ExtractResult]:
    """Every shard's result; once ``stop`` says so (or on Ctrl-C), the rest are stopped."""
    results: list[ExtractResult] = []
    pending = dict(futures)
    try:
        while pending and not stop():
            extractor.pump()
            for future in [f for f in pending if f.done()]:
                pending.pop(future)
                results.append(future.result())
                extractor.sink.finished(results[-1])
    except KeyboardInterrupt:  # a caller that installed no handler: stop the same way
        pass
    if pending:
        extractor.abort.set()
        for future, name in pending.items():
            future.cancel()
            results.append(
                future.result()
                if not future.cancelled()
                else ExtractResult(name, "interrupted", "not started")
            )
    return results


def extract_shards(
    config: ExtractConfig,
    *,
    sink: ProgressSink | None = None,
    names: Iterable[str] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> ExtractReport:
    """Extract the selected shards; every outcome is data, a full disk is raised at the end.

    ``stop`` is polled (every 0.1 s): once true, running shards stop and none start.
    """
    started = time.monotonic()
    store = Store(config.root)
    chosen = list(names) if names is not None else config.selection.apply(store.known_names())
    warnings = _flat_check(config, chosen)
    extractor = Extractor(config, sink)
    try:
        sizes = {n: s for n in chosen if (s := _size(store.final_path(n))) is not None}
        extractor.sink.planned(sum(sizes.values()))
        for name, size in sizes.items():
            extractor.sink.started(name, size, 0)
        results = _collect(extractor, {extractor.submit(n): n for n in chosen}, stop)
    finally:
        extractor.close()
    order = {n: i for i, n in enumerate(chosen)}
    results.sort(key=lambda r: order.get(r.name, 0))
    index = write_overall_index(config.out_dir)
    full = [r for r in results if r.status == "no_space"]
    if full:
        msg = f"the disk is full: {', '.join(r.name for r in full)} could not be extracted"
        raise DiskFullError(msg, hint="Nothing half-written was kept. Free space or use --out.")
    return ExtractReport(results, time.monotonic() - started, index, warnings)


def _layout_check(out: Path, layout: str) -> None:
    """One folder holds one layout: its lists (file_list.txt, wids) describe one shape."""
    if out.exists() and not out.is_dir():  # every shard would fail alike: "File exists"
        msg = f"the output {shown(str(out))} is there, not a folder"
        raise UsageError(msg, hint="Pass --out a folder (it is created when missing).")
    held = {_held(m) for p in out.glob(".done/sa_*.json") if (m := _marker(p)) is not None}
    held.discard(layout)
    if held:
        other = " and ".join(sorted(held))
        msg = f"{out} holds the {other} layout; this run asked for --layout {layout}"
        known = sorted(h for h in held if h in list(Layout))
        hint = f"Extract with --layout {known[0]} there, or pass" if known else "Pass"
        raise UsageError(msg, hint=f"{hint} --out another folder.")


def _held(marker: dict[str, Any]) -> str:
    """The layout a marker records, as said; markers from before layouts existed: shard."""
    known = marked_layout(marker)
    return str(known) if known else f"unknown ({shown(str(marker.get('layout')), 20)})"


def _marker(path: Path) -> dict[str, Any] | None:
    return read_marker(path.parent.parent, f"{path.stem}.tar")


def _flat_check(config: ExtractConfig, chosen: list[str]) -> tuple[str, ...]:
    """One folder for every file: fine for a subset, refused past what Lustre allows."""
    if config.layout is not Layout.FLAT:
        return ()
    done = len(list((config.out_dir / ".done").glob("sa_*.json")))
    per_shard = FILES_PER_SHARD // (2 if config.only else 1)
    files = (len(chosen) + done) * per_shard
    if files > FLAT_REFUSE:
        msg = (
            f"--layout flat would put about {files / 1e6:.0f} M files in one folder; "
            "Lustre allows about 15 M"
        )
        hint = "Use --layout shard (with <out>/file_list.txt) or flat for a subset only."
        raise UsageError(msg, hint=hint)
    if files > FLAT_WARN:
        return (
            f"--layout flat: about {files / 1e6:.1f} M files in one folder; listing it gets "
            "slow (--layout shard with <out>/file_list.txt scales to all of SA-1B)",
        )
    return ()


def _size(path: Path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None
