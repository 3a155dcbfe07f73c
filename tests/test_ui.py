"""Rendering: untrusted text is never read as markup, summaries name what to do next."""

from __future__ import annotations

import io
import re
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
    assert "10 B of them are kept" in text


def test_expiry_header_and_time_left():
    when = datetime(2026, 12, 1, tzinfo=UTC)
    assert "expired" in ui.render_expiry((when, when), now=when.timestamp() + 1).plain
    assert "2d 0h left" in ui.render_expiry((when, when), now=when.timestamp() - 2 * 86400).plain
    assert ui.format_bytes(1536) == "1.5 KiB"


def test_an_expired_manifest_says_how_long_ago():
    when = datetime(2026, 2, 14, 4, 3, tzinfo=UTC)
    assert ui.format_left(-(3 * 86400 + 4 * 3600)) == "expired 3d 4h ago"
    assert ui.format_left(90) == "0h 1m left"
    header = ui.render_expiry((when, when), now=when.timestamp() + 2 * 86400).plain
    assert "expired 2d 0h ago" in header and "left" not in header


def test_expired_shards_are_one_line_and_no_table_row():
    out, buffer = console()
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    results = [
        ShardResult(
            f"sa_00000{k}.tar", "expired", detail="its 'oe' time has passed", expired_at=when
        )
        for k in range(3)
    ]
    failed = ShardResult("sa_000009.tar", "failed", detail="md5 mismatch")
    ui.print_download_summary(out, DownloadReport([*results, failed], None), elapsed=1.0)
    text = buffer.getvalue()
    assert text.count("fresh manifest") == 1 and "3 shards stopped (0-2)" in text
    assert "sa_000000.tar" not in text and "sa_000009.tar" in text  # the table: the rest
    assert "kept" not in text  # nothing was


def test_shards_failed_one_way_with_one_next_step_are_one_line_and_no_table_row():
    """A server nobody can reach: its 1000 shards would fill the table with one sentence."""
    out, buffer = console()
    why = "not tried, as sa_000000.tar could not connect to cdn.example and gave up"
    hint = "Check that this machine can reach cdn.example, then run the same command."
    skipped = [
        ShardResult(f"sa_00000{k}.tar", "failed", detail=why, hint=hint) for k in (1, 2, 3, 5)
    ]
    first = ShardResult("sa_000000.tar", "failed", detail="gave up after 9 attempts")
    report = DownloadReport([first, *skipped], None)
    ui.print_download_summary(out, report, elapsed=1.0)
    text = buffer.getvalue()
    assert text.count(why) == 1 and text.count(hint) == 1
    assert "4 shards failed (1-3,5), all the same way" in text
    assert "sa_000003.tar" not in text and "sa_000000.tar │" in text  # the table: the rest


def test_units_are_binary_on_screen_and_in_json(tmp_path):
    from sa1b_cli.verify import VerifyReport, VerifyResult

    report = VerifyReport([VerifyResult("sa_000000.tar", "ok", size=2**30)], seconds=2.0)
    payload = ui.verify_json(report)
    assert payload["throughput_mib_s"] == 512.0
    out, buffer = console()
    ui.print_verify_report(out, report, deep=False)
    assert "512.0 MiB/s" in buffer.getvalue() and "1.0 GiB" in buffer.getvalue()


def test_verify_of_partial_downloads_says_incomplete_not_failed():
    from sa1b_cli.verify import VerifyReport, VerifyResult

    results = [
        VerifyResult(f"sa_00000{k}.tar", "partial", detail="download not finished")
        for k in range(4)
    ]
    out, buffer = console()
    ui.print_verify_report(out, VerifyReport(results, seconds=0.01), deep=False)
    text = buffer.getvalue()
    assert "4 partial in 0.0s\n" in text and "()" not in text
    assert "not fully downloaded yet" in text and "failed" not in text
    assert "sa1b download" in text


def test_the_live_rate_waits_until_it_means_something_then_follows_the_bytes():
    out, buffer = console()
    now = [1000.0]
    sink = ui.RichSink(out, clock=lambda: now[0])
    sink.planned(100 << 20)
    sink.started("sa_000000.tar", 100 << 20, 50 << 20)  # resumed bytes are not a rate
    for _ in range(2):  # two 1 MiB steps a millisecond apart: no rate at all yet
        now[0] += 0.001
        sink.advanced("sa_000000.tar", 1 << 20)
    out.print(sink.progress.get_renderable())
    assert "/s" not in buffer.getvalue()
    for _ in range(40):  # then 1 MiB every 0.1 s: 10 MiB/s, on both lines
        now[0] += 0.1
        sink.advanced("sa_000000.tar", 1 << 20)
    buffer.seek(0)
    buffer.truncate()
    out.print(sink.progress.get_renderable())
    rates = [float(r) for r in re.findall(r"([\d.]+) MiB/s", buffer.getvalue())]
    assert len(rates) == 2 and all(9.5 < r < 10.5 for r in rates), buffer.getvalue()


def test_a_rate_meter_falls_when_bytes_stop():
    meter = ui.RateMeter()
    for step in range(31):
        meter.add(1 << 20, 10.0 + step * 0.1)  # 10 MiB/s for 3 s
    assert meter.rate(13.0) == 10 << 20
    assert meter.rate(16.0) == (30 << 20) / 6  # nothing for 3 s: half the rate
    assert ui.RateMeter().rate(5.0) is None


def _same_failures() -> list[ShardResult]:
    dead = "not tried, as sa_000003.tar could not connect to cdn.example and gave up"
    other = "gave up after 9 attempts: could not connect (connection refused), 9 times"
    return [
        ShardResult("sa_000003.tar", "failed", detail=other),
        *(ShardResult(f"sa_{n:06d}.tar", "failed", detail=dead) for n in (4, 5, 6, 8)),
        ShardResult("sa_000007.tar", "present"),  # a log says it, and the run breaks
        ShardResult("sa_000009.tar", "failed", detail=dead),
        ShardResult("sa_000010.tar", "downloaded"),
        ShardResult("sa_000011.tar", "failed", detail=dead),  # a new run of the same words
    ]


def test_a_run_of_one_failure_is_said_once_then_counted_in_a_log():
    out, buffer = console()
    with ui.PlainSink(out) as sink:
        for result in _same_failures():
            sink.finished(result)
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "sa_000003.tar: failed (gave up after 9 attempts: could not connect (connection"
        " refused), 9 times)",
        "sa_000004.tar: failed (not tried, as sa_000003.tar could not connect to cdn.example"
        " and gave up)",
        "3 more shards failed the same way (5-6,8)",
        "sa_000007.tar: present",
        "sa_000009.tar: failed (not tried, as sa_000003.tar could not connect to cdn.example"
        " and gave up)",
        "sa_000010.tar: downloaded",
        "sa_000011.tar: failed (not tried, as sa_000003.tar could not connect to cdn.example"
        " and gave up)",
    ]


def test_a_run_of_one_failure_is_said_once_then_counted_live():
    out, buffer = console()
    with ui.RichSink(out, clock=lambda: 0.0) as sink:
        for result in _same_failures()[:7]:  # the live view does not show a shard present
            sink.finished(result)
    text = buffer.getvalue()
    assert text.count("not tried") == 1 and "sa_000005.tar" not in text
    assert "4 more shards failed the same way (5-6,8-9)" in text


def test_failures_not_named_like_shards_are_listed_by_name():
    out, buffer = console()
    with ui.PlainSink(out) as sink:
        for name in ("a.tar", "b.tar", "c.tar", "d.tar", "e.tar"):
            sink.finished(ShardResult(name, "failed", detail="no space left"))
    last = buffer.getvalue().splitlines()[-1]
    assert last == "4 more shards failed the same way (b.tar, c.tar, d.tar, ...)"


def test_paths_the_user_gave_are_shown_escaped_never_obeyed(tmp_path):
    """A root, an output folder or a manifest named with escapes (and brackets) prints as text."""
    from sa1b_cli.core.manifest import parse_manifest
    from sa1b_cli.core.status import ShardState
    from sa1b_cli.extract.pool import ExtractReport

    evil = tmp_path / "r\x1b[31m[bold]x\x07"
    out, buffer = console()
    ui.print_status(out, [ShardState("sa_000000.tar", "partial", 5, 10)], root=evil)
    ui.print_extract_report(out, ExtractReport([], 1.0, evil / "index.csv"), out=evil)
    manifest = parse_manifest("file_name\tcdn_link\nsa_000000.tar\thttps://cdn.example/a.tar")
    ui.print_manifest_summary(out, ui.manifest_summary(manifest, now=0.0) | {"path": str(evil)})
    text = buffer.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert text.count("r\\x1b[31m[bold]x\\x07") == 4, text


def test_an_empty_selection_says_so_instead_of_an_empty_tally():
    out, buffer = console()
    ui.print_download_summary(out, DownloadReport([], None), elapsed=0.1)
    assert buffer.getvalue().startswith("no shards selected;"), buffer.getvalue()
