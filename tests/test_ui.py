"""Rendering: untrusted text is never read as markup, summaries name what to do next."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from sa1b_cli import ui
from sa1b_cli.core.results import ShardResult
from sa1b_cli.download.engine import DownloadReport


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, color_system=None), buffer


def test_details_with_brackets_render_literally():
    out, buffer = console()
    sink = ui.PlainSink(out)
    result = ShardResult("sa_000001.tar", "failed", detail="[Errno 28] No space [/weird]")
    sink.finished(result)
    sink.note("sa_000001.tar", "retry [bold]1[/]")
    ui.print_download_summary(out, DownloadReport([result], None), elapsed=1.0)
    text = buffer.getvalue()
    assert "[Errno 28] No space [/weird]" in text and "retry [bold]1[/]" in text


def test_expired_summary_says_what_to_do():
    out, buffer = console()
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    result = ShardResult(
        "sa_000002.tar", "expired", bytes_done=10, detail="link expired", expired_at=when
    )
    ui.print_download_summary(out, DownloadReport([result], None), elapsed=2.0)
    text = buffer.getvalue()
    assert "2026-12-01 12:00 UTC" in text and "--links NEW_MANIFEST" in text
    assert "Partial bytes are kept" in text


def test_expiry_header_and_time_left():
    when = datetime(2026, 12, 1, tzinfo=UTC)
    assert "expired" in ui.render_expiry((when, when), now=when.timestamp() + 1).plain
    assert "2d 0h left" in ui.render_expiry((when, when), now=when.timestamp() - 2 * 86400).plain
    assert ui.format_bytes(1536) == "1.5 KiB"
