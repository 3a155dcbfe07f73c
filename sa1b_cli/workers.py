"""--workers N: one download split over N processes, each with its own event loop.

One Python event loop tops out well below a fast link (an httpx stream is CPU-bound
on one core), so N processes each take a balanced share of the selection. Progress
comes back over a queue in batches; the parent renders it and merges the reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from sa1b_cli.core.events import ProgressSink
from sa1b_cli.core.manifest import read_manifest
from sa1b_cli.core.procs import die_with_parent
from sa1b_cli.core.selection import Selection
from sa1b_cli.download.config import DownloadConfig
from sa1b_cli.download.engine import DownloadReport, check_run_space, run_downloads
from sa1b_cli.extract.config import ExtractConfig
from sa1b_cli.extract.pool import ExtractReport
from sa1b_cli.extract.shard import write_overall_index
from sa1b_cli.pipeline import download_and_extract

__all__ = ["QueueSink", "run_download_workers", "split_selection"]

FLUSH_SECONDS = 0.25


class QueueSink:
    """A sink in a worker process: batches byte counts, sends events to the parent."""

    def __init__(self, events: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.events = events
        self.clock = clock
        self.pending: dict[str, int] = {}
        self.last = clock()

    def _flush(self) -> None:
        for name, nbytes in self.pending.items():
            self.events.put(("advanced", name, nbytes))
        self.pending.clear()
        self.last = self.clock()

    def planned(self, nbytes: int) -> None:
        self.events.put(("planned", nbytes))

    def started(self, name: str, total: int | None, resumed_from: int) -> None:
        self._flush()
        self.events.put(("started", name, total, resumed_from))

    def advanced(self, name: str, nbytes: int) -> None:
        self.pending[name] = self.pending.get(name, 0) + nbytes
        if self.clock() - self.last >= FLUSH_SECONDS:
            self._flush()

    def note(self, name: str, text: str) -> None:
        self.events.put(("note", name, text))

    def finished(self, result: Any) -> None:
        self._flush()
        self.events.put(("finished", result))  # results are plain dataclasses: they pickle

    def connections(self, count: int) -> None:
        self.events.put(("connections", os.getpid(), count))


def split_selection(config: DownloadConfig, workers: int) -> list[DownloadConfig]:
    """Balanced shares of what ``config`` selects, one per worker (round robin in shard order).

    The --connections ceiling is the run's, so each process gets its share of it.
    """
    names = config.selection.apply(read_manifest(config.links).rows)
    connections = max(1, config.connections // workers)
    return [
        replace(config, selection=Selection(tuple(names[k::workers])), connections=connections)
        for k in range(workers)
        if names[k::workers]
    ]


_events: Any = None


def _init(events: Any) -> None:
    global _events
    _events = events
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent asks us to stop via SIGTERM


WorkerResult = tuple[DownloadReport, ExtractReport | None]


async def _worker_main(config: DownloadConfig, xconfig: ExtractConfig | None) -> WorkerResult:
    _events.put(("pid", os.getpid()))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sink = QueueSink(_events)
    if xconfig is None:
        return await run_downloads(config, sink=sink, stop=stop), None
    return await download_and_extract(config, xconfig, sink=sink, stop=stop)


def _work(config: DownloadConfig, xconfig: ExtractConfig | None) -> WorkerResult:
    return asyncio.run(_worker_main(config, xconfig))


def _replay(
    sink: ProgressSink, event: tuple[Any, ...], pids: set[int], links: dict[int, int]
) -> None:
    kind = event[0]
    if kind == "pid":
        pids.add(event[1])
    elif kind == "connections":  # each process counts its own; the display shows the sum
        links[event[1]] = event[2]
        sink.connections(sum(links.values()))
    elif kind == "planned":
        sink.planned(event[1])
    elif kind == "started":
        sink.started(event[1], event[2], event[3])
    elif kind == "advanced":
        sink.advanced(event[1], event[2])
    elif kind == "note":
        sink.note(event[1], event[2])
    else:
        sink.finished(event[1])


def run_download_workers(
    config: DownloadConfig,
    workers: int,
    *,
    sink: ProgressSink,
    stop: Callable[[], bool],
    extract: ExtractConfig | None = None,
) -> tuple[DownloadReport, ExtractReport | None]:
    """Run the download (and its pipelined extraction) in ``workers`` processes.

    When ``stop()`` turns True the workers checkpoint and return their reports.
    """
    started = time.monotonic()
    if config.check_space:
        sink.planned(asyncio.run(check_run_space(config)))
        config = replace(config, check_space=False)
    context = multiprocessing.get_context("fork")
    events: Any = context.Queue()
    shares = split_selection(config, workers)
    if extract is not None:  # the cores are shared between the workers' extraction pools
        extract = replace(extract, jobs=max(1, extract.jobs // max(1, len(shares))))
    with ProcessPoolExecutor(
        len(shares) or 1, mp_context=context, initializer=_init, initargs=(events,)
    ) as pool:
        futures = [pool.submit(_work, share, extract) for share in shares]
        _pump_until_done(futures, events, sink, stop)
        outcomes = [f.result() for f in futures]
    report = _merge([download for download, _ in outcomes])
    if extract is None:
        return report, None
    extracted = [r for _, x in outcomes if x is not None for r in x.results]
    index = write_overall_index(extract.out_dir)
    return report, ExtractReport(extracted, time.monotonic() - started, index)


def _pump_until_done(
    futures: list[Future[WorkerResult]], events: Any, sink: ProgressSink, stop: Callable[[], bool]
) -> None:
    pids: set[int] = set()
    links: dict[int, int] = {}
    asked = False
    while not all(f.done() for f in futures) or not events.empty():
        if stop() and not asked:
            asked = True
            for pid in pids:  # SIGTERM: each worker checkpoints and returns its report
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        try:
            _replay(sink, events.get(timeout=0.1), pids, links)
        except queue.Empty:
            continue


def _merge(reports: list[DownloadReport]) -> DownloadReport:
    results = sorted((r for report in reports for r in report.results), key=lambda r: r.name)
    windows = [r.expiry for r in reports if r.expiry is not None]
    expiry = (min(w[0] for w in windows), max(w[1] for w in windows)) if windows else None
    warnings = reports[0].warnings if reports else ()
    peak = sum(r.connections_peak for r in reports)  # an upper bound: peaks need not coincide
    return DownloadReport(results, expiry, sum(r.bytes_to_fetch for r in reports), warnings, peak)
