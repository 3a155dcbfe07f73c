"""download --extract: each shard is extracted as soon as it is whole, while others download."""

from __future__ import annotations

import asyncio
import time

from sa1b_cli.core.events import ProgressSink
from sa1b_cli.core.results import ShardResult
from sa1b_cli.download.config import DownloadConfig
from sa1b_cli.download.engine import DownloadReport, run_downloads
from sa1b_cli.extract.config import ExtractConfig
from sa1b_cli.extract.pool import Extractor, ExtractReport
from sa1b_cli.extract.shard import ExtractResult, write_overall_index

__all__ = ["download_and_extract"]


async def download_and_extract(
    download: DownloadConfig,
    extract: ExtractConfig,
    *,
    sink: ProgressSink,
    stop: asyncio.Event | None = None,
) -> tuple[DownloadReport, ExtractReport]:
    """Download the selection and extract every shard that is (or becomes) complete."""
    started = time.monotonic()
    extractor = Extractor(extract)
    extracted: list[ExtractResult] = []

    async def after(result: ShardResult) -> None:
        if not result.name.endswith(".tar"):
            return
        outcome = await asyncio.wrap_future(extractor.submit(result.name))
        extracted.append(outcome)
        sink.note(result.name, f"extract: {outcome.status}")
        sink.finished(outcome)

    try:
        report = await run_downloads(download, sink=sink, stop=stop, after=after)
        done = {r.name for r in extracted}
        # Shards that were already downloaded before this run still need their extraction.
        await asyncio.gather(*(after(r) for r in report.results if r.ok and r.name not in done))
    finally:
        if stop is not None and stop.is_set():
            extractor.abort.set()
        await asyncio.to_thread(extractor.close)
    index = write_overall_index(extract.out_dir)
    return report, ExtractReport(extracted, time.monotonic() - started, index)
