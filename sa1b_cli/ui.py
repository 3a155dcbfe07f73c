"""Everything people see (with cli.py the only rich module): live progress, tables, summaries.

Units: sizes and rates are binary everywhere (KiB, MiB, GiB; MiB/s), on screen and in the
``--json`` field names (``*_mib_s``); byte counts in JSON are plain bytes.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

from sa1b_cli.core.events import Outcome
from sa1b_cli.core.manifest import Manifest, host_of, shard_index
from sa1b_cli.core.results import ShardResult
from sa1b_cli.core.status import ShardState
from sa1b_cli.core.text import counted, escaped, format_size

if TYPE_CHECKING:
    from sa1b_cli.download.engine import DownloadReport
    from sa1b_cli.extract.pool import ExtractReport
    from sa1b_cli.show.image import ShowResult
    from sa1b_cli.verify.layers import VerifyReport

__all__ = [
    "PlainSink",
    "RichSink",
    "download_json",
    "format_bytes",
    "format_duration",
    "format_left",
    "render_expiry",
]

STATUS_STYLE = {
    "downloaded": "green",
    "present": "green",
    "ok": "green",
    "complete": "green",
    "extracted": "green",
    "expired": "yellow",
    "partial": "cyan",
    "active": "cyan",
    "busy": "cyan",
    "interrupted": "yellow",
    "missing": "dim",
    "unrecorded": "yellow",
    "not_covered": "yellow",
    "disputed": "yellow",
}


def format_bytes(n: float) -> str:
    return format_size(n)


def format_duration(seconds: float) -> str:
    """``93784`` -> ``"1d 2h"``; ``150`` -> ``"0h 2m"``; ``42`` -> ``"42s"``."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"


def format_left(seconds: float) -> str:
    """Time until an expiry: ``"2d 0h left"``, or ``"expired 3d 4h ago"`` once it has passed."""
    if seconds <= 0:
        return f"expired {format_duration(seconds)} ago"
    return f"{format_duration(seconds)} left"


def render_expiry(window: tuple[datetime, datetime] | None, *, now: float) -> Text:
    if window is None:
        return Text("links: no expiry found in the manifest", style="yellow")
    first = window[0]
    left = first.timestamp() - now
    style = "red" if left <= 0 else "yellow" if left < 3 * 86400 else "green"
    return Text(f"links expire {first:%Y-%m-%d %H:%M} UTC ({format_left(left)})", style=style)


def _titled_table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    return table


def words(status: str) -> str:
    """A state as people read it: ``failed_verification`` -> ``failed verification``."""
    return status.replace("_", " ")


def status_text(status: str) -> Text:
    return Text(words(status), style=STATUS_STYLE.get(status, "red"))


def _tally(statuses: Iterable[str], noun: str) -> str:
    """``"3 shards: 2 downloaded, 1 failed"``; the JSON keeps the snake_case names."""
    counts = Counter(statuses)
    if not counts:  # an empty selection (a --part past the shards, say)
        return f"[bold]no {noun}s selected[/]"
    parts = ", ".join(f"{n:,} {words(s)}" for s, n in sorted(counts.items()))
    return f"[bold]{counted(counts.total(), noun)}:[/] {parts}"


class StatusColumn(ProgressColumn):
    """The shard's last note (retrying, restarted...) in a fixed column."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("note", ""))[:48], style="dim")


class RateMeter:
    """A rate worth showing: none before ``MIN_SPAN`` seconds of samples, then a sliding mean.

    Progress comes in steps (a connection reports every 256 KiB or so): two steps a
    millisecond apart are not a rate. Measured from the first step on (a resumed file's
    bytes never count), over the last ``WINDOW`` seconds, so a stall shows as a falling rate.
    """

    MIN_SPAN = 2.0
    WINDOW = 10.0

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()  # (time, bytes so far)
        self.count = 0

    def add(self, nbytes: int, now: float) -> None:
        self.count += nbytes
        self.samples.append((now, self.count))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.WINDOW:
            self.samples.popleft()

    def rate(self, now: float) -> float | None:
        if not self.samples or now - self.samples[0][0] < self.MIN_SPAN:
            return None
        since, counted = self.samples[0]
        return (self.count - counted) / (now - since)


def _meter(task: Task) -> RateMeter | None:
    meter = task.fields.get("meter")
    return meter if isinstance(meter, RateMeter) else None


class SpeedColumn(ProgressColumn):
    """Speed in binary units (rich's column is decimal), blank until it means something."""

    def render(self, task: Task) -> Text:
        meter = _meter(task)
        speed = meter.rate(task.get_time()) if meter is not None else None
        text = "" if speed is None else f"{format_bytes(speed)}/s"
        return Text(text, style="progress.data.speed")


class LeftColumn(ProgressColumn):
    """Time left at the meter's rate: blank while there is no rate to go by."""

    def render(self, task: Task) -> Text:
        meter = _meter(task)
        speed = meter.rate(task.get_time()) if meter is not None else None
        if not speed or task.total is None:
            return Text("")
        left = max(0.0, task.total - task.completed) / speed
        return Text(format_duration(left), style="progress.remaining")


class _ExpiryProgress(Progress):
    """Progress with a header: link expiry, and a warning when the ETA runs past it."""

    expiry: datetime | None = None
    total_task: TaskID | None = None
    connections: int | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        if self.connections is not None:
            yield Text(f"connections: {self.connections}", style="dim")
        if self.expiry is not None:
            header = render_expiry((self.expiry, self.expiry), now=time.time())
            if self.total_task is not None:
                task = self._tasks[self.total_task]
                meter, now = _meter(task), task.get_time()
                speed = meter.rate(now) if meter is not None else None
                eta = (task.total or 0) - task.completed
                if speed and time.time() + eta / speed > self.expiry.timestamp():
                    header.append(
                        "  ETA runs past the expiry: get a fresh manifest soon", "bold red"
                    )
            yield header
        yield self.make_tasks_table(self.tasks)


class _Repeats:
    """Failures in a row with one detail are said once in full, then as a count: a host
    nobody can reach fails a thousand shards with the same words, one log line each."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.detail: str | None = None  # the failure just said in full
        self.names: list[str] = []  # the shards that repeated it since

    def folds(self, result: Outcome) -> bool:
        """Whether ``result`` repeats the failure just said: then it is counted, not said."""
        if result.status == "failed" and result.detail and result.detail == self.detail:
            self.names.append(result.name)
            return True
        self.flush()
        self.detail = result.detail if result.status == "failed" else None
        return False

    def flush(self) -> None:
        if self.names:
            if all(shard_index(name) is not None for name in self.names):
                which = _shard_ranges(self.names)
            else:  # a line, not a list: the first few names
                which = ", ".join(self.names[:3]) + (", ..." if len(self.names) > 3 else "")
            self.say(f"{counted(len(self.names), 'more shard')} failed the same way ({which})")
        self.names = []


class RichSink:
    """Live progress: one line per active shard and a total with speed and ETA."""

    def __init__(
        self,
        console: Console,
        *,
        expiry: datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.progress = _ExpiryProgress(
            TextColumn("{task.description:>16}"),
            BarColumn(bar_width=28),
            DownloadColumn(binary_units=True),
            SpeedColumn(),
            LeftColumn(),
            StatusColumn(),
            console=console,
            transient=False,
            refresh_per_second=4,
            get_time=clock,
        )
        self.progress.expiry = expiry
        # planned() fills the total in
        self.meters: dict[TaskID, RateMeter] = {}
        self.total = self._add("total", total=None)
        self.progress.total_task = self.total
        self.tasks: dict[str, TaskID] = {}
        self.repeats = _Repeats(self._say)

    def _say(self, text: str) -> None:
        self.progress.console.print(Text(f"{'':>16} {text}", style="dim"))

    def _add(self, label: str, **fields: Any) -> TaskID:
        meter = RateMeter()
        task = self.progress.add_task(label, meter=meter, **fields)
        self.meters[task] = meter
        return task

    def __enter__(self) -> RichSink:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.repeats.flush()
        self.progress.stop()

    def planned(self, nbytes: int) -> None:
        task = self.progress.tasks[self.total]
        self.progress.update(self.total, total=(task.total or 0) + nbytes)

    def started(self, name: str, total: int | None, resumed_from: int) -> None:
        task = self.tasks.get(name)
        label = name.removesuffix(".tar")
        note = f"resumed at {format_bytes(resumed_from)}" if resumed_from else ""
        if task is None:
            self.tasks[name] = self._add(label, total=total, completed=resumed_from, note=note)
        else:
            self.progress.update(task, total=total, completed=resumed_from, note=note)

    def advanced(self, name: str, nbytes: int) -> None:
        now = self.clock()
        for task in (self.tasks.get(name), self.total):
            if task is not None:
                self.progress.advance(task, nbytes)
                self.meters[task].add(nbytes, now)

    def note(self, name: str, text: str) -> None:
        task = self.tasks.get(name)
        if task is not None:
            self.progress.update(task, note=text)

    def connections(self, count: int) -> None:
        self.progress.connections = count

    def finished(self, result: Outcome) -> None:
        task = self.tasks.pop(result.name, None)
        if task is not None:
            self.progress.remove_task(task)
            del self.meters[task]
        if result.status in ("present", "expired") or self.repeats.folds(result):
            return  # expired: said once, in the summary
        line = Text(f"{result.name:>16} ").append(status_text(result.status))
        if result.detail:
            line.append(f"  {result.detail}", style="dim")
        self.progress.console.print(line)


class PlainSink:
    """Line-based progress for logs and pipes: one line per event, totals every 30 s."""

    def __init__(self, console: Console, *, every: float = 30.0) -> None:
        self.console = console
        self.every = every
        self.done = 0
        self.links = 0
        self.started_at = time.monotonic()
        self.last = self.started_at
        self.repeats = _Repeats(self._say)

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def __enter__(self) -> PlainSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.repeats.flush()

    def planned(self, nbytes: int) -> None:
        if nbytes:
            self.console.print(f"total: {format_bytes(nbytes)}", highlight=False)

    def started(self, name: str, total: int | None, resumed_from: int) -> None:
        size = format_bytes(total) if total else "unknown size"
        resumed = f", resuming at {format_bytes(resumed_from)}" if resumed_from else ""
        self.console.print(f"{name}: started ({size}{resumed})", highlight=False, markup=False)

    def advanced(self, name: str, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.started_at, 1e-9)
            self.console.print(
                f"progress: {format_bytes(self.done)} at {format_bytes(rate)}/s"
                f" over {counted(self.links, 'connection')}",
                highlight=False,
            )

    def note(self, name: str, text: str) -> None:
        self.console.print(f"{name}: {text}", highlight=False, markup=False)

    def connections(self, count: int) -> None:
        self.links = count

    def finished(self, result: Outcome) -> None:
        if result.status == "expired" or self.repeats.folds(result):
            return  # expired: said once for all of them, in the summary
        detail = f" ({result.detail})" if result.detail else ""
        line = f"{result.name}: {words(result.status)}{detail}"
        self.console.print(line, highlight=False, markup=False)


def results_table(results: Iterable[ShardResult]) -> Table:
    table = _titled_table("shards that need attention", "shard", "status", "have", "detail")
    for r in results:
        have = format_bytes(r.bytes_done) + (f" / {format_bytes(r.size)}" if r.size else "")
        table.add_row(r.name, status_text(r.status), have, Text(r.detail or ""))
    return table


# -- manifest ------------------------------------------------------------------------------


def _shard_ranges(names: Iterable[str]) -> str:
    """The shards' numbers as ranges: ``0-2,5`` (names not shaped like a shard's left out)."""
    return _ranges(sorted(n for name in names if (n := shard_index(name)) is not None))


def _ranges(numbers: list[int]) -> str:
    spans: list[str] = []
    for n in numbers:
        if spans and spans[-1].split("-")[-1] == str(n - 1):
            spans[-1] = f"{spans[-1].split('-')[0]}-{n}"
        else:
            spans.append(str(n))
    return ",".join(spans)


def manifest_summary(manifest: Manifest, *, now: float) -> dict[str, object]:
    window = manifest.expiry_window()
    return {
        "command": "links",
        "path": str(manifest.path) if manifest.path else None,
        "shards": len(manifest.shards),
        "aux": [r.file_name for r in manifest.aux],
        "unknown": [r.file_name for r in manifest.unknown],
        "missing_shards": _ranges(manifest.missing_shards),
        "duplicates": list(manifest.duplicates),
        "expires_first": window[0].isoformat() if window else None,
        "expires_last": window[1].isoformat() if window else None,
        "seconds_left": round(window[0].timestamp() - now) if window else None,
        "hosts": sorted({host_of(r.url) for r in manifest.rows.values()}),
        "warnings": [*manifest.warnings, *_expiry_warning(window, now)],
    }


def _expiry_warning(window: tuple[datetime, datetime] | None, now: float) -> list[str]:
    if window is None or window[0].timestamp() > now:
        return []
    when = f"{window[0]:%Y-%m-%d %H:%M} UTC"
    ago = format_duration(now - window[0].timestamp())
    return [
        f"these links expired on {when} ({ago} ago); get a fresh manifest from Meta's "
        "SA-1B page and pass it with --links"
    ]


def print_manifest_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("manifest", Text(escaped(str(summary["path"]))))
    table.add_row("shards", f"{summary['shards']} of 1000")
    table.add_row("missing", summary["missing_shards"] or "none")
    table.add_row("auxiliary", ", ".join(summary["aux"]) or "none")
    table.add_row("unknown rows", ", ".join(summary["unknown"]) or "none")
    table.add_row("duplicates", ", ".join(summary["duplicates"]) or "none")
    table.add_row("hosts", ", ".join(summary["hosts"]))
    if summary["expires_first"]:
        left = format_left(summary["seconds_left"])
        style = "red" if summary["seconds_left"] <= 0 else "green"
        table.add_row(
            "expires",
            Text(f"{summary['expires_first']} ({left}); latest {summary['expires_last']}", style),
        )
    console.print(table)
    for warning in summary["warnings"]:
        console.print(Text("warning: ", style="yellow").append(warning), highlight=False)


# -- download summary ----------------------------------------------------------------------


def download_json(report: DownloadReport, code: int, elapsed: float) -> dict[str, Any]:
    return {
        "command": "download",
        "exit_code": code,
        "seconds": round(elapsed, 3),
        "bytes_fetched": sum(r.bytes_fetched for r in report.results),
        "links_expire": report.expiry[0].isoformat() if report.expiry else None,
        "connections_peak": report.connections_peak,
        "shards": [{**asdict(r), "digests": dict(r.digests)} for r in report.results],
    }


def print_download_summary(console: Console, report: DownloadReport, *, elapsed: float) -> None:
    counts = Counter(r.status for r in report.results)
    fetched = sum(r.bytes_fetched for r in report.results)
    rate = fetched / elapsed if elapsed > 0 else 0.0
    console.print(
        f"{_tally(counts.elements(), 'shard')}; fetched "
        f"{format_bytes(fetched)} in {elapsed:,.1f}s ({format_bytes(rate)}/s)",
        highlight=False,
    )
    troubled = [r for r in report.results if not r.ok and r.status != "expired"]
    _print_expired(console, [r for r in report.results if r.status == "expired"])
    troubled = _print_shared_failures(console, troubled)
    if troubled:
        console.print(results_table(troubled))
    fell_back = [r for r in report.results if r.fallback]
    if fell_back:
        names = ", ".join(r.name for r in fell_back)
        console.print(
            f"[yellow]{counted(len(fell_back), 'shard')} fell back to one connection[/] ({names}): "
            f"{escape(fell_back[0].fallback or '')}",
            highlight=False,
        )
    if counts.get("interrupted"):
        console.print("[yellow]Interrupted.[/] Run the same command again to continue.")


def _print_shared_failures(console: Console, failed: list[ShardResult]) -> list[ShardResult]:
    """Shards failed for one reason with one next step (a host nobody could reach), said
    once for all of them: a dead host's 1000 rows would say the same. Returns the others."""
    groups: dict[tuple[str, str], list[ShardResult]] = {}
    for r in failed:
        if r.status == "failed" and r.hint and r.detail:
            groups.setdefault((r.detail, r.hint), []).append(r)
    for (detail, hint), same in groups.items():
        names = _shard_ranges(r.name for r in same)
        console.print(
            Text.assemble(
                (f"{counted(len(same), 'shard')} failed", "yellow"),
                f" ({names}), all the same way: {detail}. {hint}",
            ),
            highlight=False,
        )
    grouped = {id(r) for same in groups.values() for r in same}
    return [r for r in failed if id(r) not in grouped]


def _print_expired(console: Console, expired: list[ShardResult]) -> None:
    """Expired links, said once for all their shards (the table would only repeat it)."""
    if not expired:
        return
    when = min((r.expired_at for r in expired if r.expired_at), default=None)
    shown = f" on {when:%Y-%m-%d %H:%M} UTC" if when else ""
    kept = sum(r.bytes_done for r in expired)
    names = _shard_ranges(r.name for r in expired)
    saved = f" {format_bytes(kept)} of them are kept." if kept else ""
    console.print(
        f"[yellow]The links expired{shown}:[/] {counted(len(expired), 'shard')} stopped "
        f"({escape(names)}).{saved} Get a fresh manifest from Meta's SA-1B page, then run "
        "[bold]sa1b download --links NEW_MANIFEST[/] with the same options.",
        highlight=False,
    )


# -- status --------------------------------------------------------------------------------


def status_json(states: list[ShardState], *, root: Path) -> dict[str, Any]:
    return {
        "command": "status",
        "exit_code": 0,  # status reports; it never fails for what it finds
        "root": str(root),
        "shards": [_state_json(s) for s in states],
    }


def _state_json(state: ShardState) -> dict[str, Any]:
    fields = asdict(state)
    return {
        "name": fields.pop("name"),
        "status": fields.pop("state"),
        **fields,
        "percent": state.percent,
    }


def print_status(console: Console, states: list[ShardState], *, root: Path) -> None:
    table = _titled_table(
        f"sa1b root {escape(escaped(str(root)))}", "shard", "status", "have", "detail"
    )
    for s in states:
        if s.state == "missing":
            continue
        have = format_bytes(s.bytes_done)
        if s.percent is not None and s.state != "complete":
            have += f" ({s.percent:.1f}%)"
        detail = f"held by {s.holder}" if s.holder else s.detail or ""
        if s.checked:
            detail = f"{detail} checked {' '.join(s.checked)}".strip()
        if s.host and not s.holder:
            detail = f"{detail} (by {s.host})".strip()
        table.add_row(s.name, status_text(s.state), have, Text(detail))
    if table.rows:
        console.print(table)
    total = sum(s.bytes_done for s in states)
    console.print(
        f"{_tally((s.state for s in states), 'shard')}; {format_bytes(total)} on disk",
        highlight=False,
    )


# -- verify ----------------------------------------------------------------------------------


def verify_json(report: VerifyReport) -> dict[str, Any]:
    read = sum(r.size or 0 for r in report.results if r.status not in ("missing", "partial"))
    images = sum(r.images for r in report.results)
    return {
        "command": "verify",
        "exit_code": report.exit_code,
        "seconds": round(report.seconds, 3),
        "throughput_mib_s": round(read / 2**20 / report.seconds, 1) if report.seconds else None,
        "images_per_s": round(images / report.seconds, 1) if report.seconds else None,
        "exported": str(report.exported) if report.exported else None,
        "shards": [
            {
                "name": r.name,
                "status": r.status,
                "size": r.size,
                "checks": r.checks,
                "detail": r.detail,
                "digests": r.digests,
                "images": r.images,
                "masks": r.masks,
                "warnings": dict(r.warnings),
            }
            for r in report.results
        ],
    }


def print_verify_report(console: Console, report: VerifyReport, *, deep: bool) -> None:
    if not report.results:
        console.print(
            "nothing to verify: no shards found under this root (run sa1b download, "
            "or pick shards with --subset / --shards)",
            highlight=False,
        )
        return
    table = _titled_table("verify", "shard", "status", "size", "checks", "first problem")
    for r in report.results:
        size = format_bytes(r.size) if r.size is not None else "-"
        table.add_row(r.name, status_text(r.status), size, " ".join(r.checks), Text(r.detail or ""))
    console.print(table)
    summary = _tally((r.status for r in report.results), "shard")
    payload = verify_json(report)
    read = payload["throughput_mib_s"]
    rates = [f"{format_bytes(read * 2**20)}/s"] if read else []
    if deep and payload["images_per_s"]:
        rates.append(f"{payload['images_per_s']} images/s")
    shown = f" ({', '.join(rates)})" if rates else ""  # never "(, 6.3 images/s)"
    console.print(
        f"{summary} in {report.seconds:.1f}s{shown}",
        highlight=False,
    )
    warnings: Counter[str] = Counter()
    for r in report.results:
        warnings.update(r.warnings)
    for text, n in warnings.most_common(10):
        console.print(
            Text("note: ", style="yellow").append(f"{n} x {text} (unusual, not corrupt)"),
            highlight=False,
        )
    unfinished = [r.name for r in report.results if r.status in ("partial", "missing")]
    disputed = [r.name for r in report.results if r.status == "disputed"]
    bad = [r.name for r in report.results if not r.ok and r.name not in unfinished + disputed]
    if unfinished:  # incomplete, not corrupt: nothing failed there
        console.print(
            f"[yellow]{counted(len(unfinished), 'shard')} not fully downloaded yet:[/] "
            f"{', '.join(unfinished)}. Run [bold]sa1b download[/] with the same selection "
            "to finish them, then verify again.",
            highlight=False,
        )
    if bad:
        console.print(
            f"[red]{counted(len(bad), 'shard')} failed:[/] {', '.join(bad)}. Run "
            "[bold]sa1b download[/] with the same selection to fetch them again.",
            highlight=False,
        )
    if disputed:
        console.print(
            f"[yellow]{counted(len(disputed), 'shard')} disputed:[/] {', '.join(disputed)}: "
            "two copies agree on being different from the community md5 list; not fetched again.",
            highlight=False,
        )
    if report.exported:
        message = f"checksum list written to {escaped(str(report.exported))}"
        console.print(message, highlight=False, markup=False)


# -- extract ---------------------------------------------------------------------------------


def extract_json(report: ExtractReport) -> dict[str, Any]:
    return {
        "command": "extract",
        "exit_code": report.exit_code,
        "seconds": round(report.seconds, 3),
        "index": str(report.index) if report.index else None,
        "lists": _lists(report.index),
        "warnings": list(report.warnings),
        "shards": [
            {
                "name": r.name,
                "status": r.status,
                "detail": r.detail,
                "images": r.images,
                "bytes_read": r.bytes_read,
                "bytes_written": r.bytes_written,
                "seconds": round(r.seconds, 3),
                "refused": r.refused,
                "skipped_members": r.skipped,
                "salvaged": r.salvaged,
            }
            for r in report.results
        ],
    }


def _lists(index: Path | None) -> dict[str, str]:
    """The list files beside the index, for scripts and trainers to point at."""
    if index is None:
        return {}
    names = ("index.csv", "file_list.txt", "sa_images_ids.txt", "wids-index.json")
    return {n: str(index.parent / n) for n in names if (index.parent / n).is_file()}


def print_extract_report(console: Console, report: ExtractReport, *, out: Path) -> None:
    for warning in report.warnings:
        console.print(Text("warning: ", style="yellow").append(warning), highlight=False)
    written = sum(r.bytes_written for r in report.results)
    images = sum(r.images for r in report.results)
    rate = written / report.seconds if report.seconds else 0.0
    summary = _tally((r.status for r in report.results), "shard")
    console.print(
        f"{summary}; {images:,} images, "
        f"{format_bytes(written)} written in {report.seconds:.1f}s "
        f"({format_bytes(rate)}/s) into {escape(escaped(str(out)))}",
        highlight=False,
    )
    troubled = [r for r in report.results if not r.ok or r.refused]
    if troubled:
        table = _titled_table("shards that need attention", "shard", "status", "detail")
        for r in troubled:
            table.add_row(r.name, status_text(r.status), Text(r.detail or ""))
        console.print(table)
    if report.index:
        where = escaped(str(report.index))
        console.print(f"index of every extracted image: {where}", highlight=False, markup=False)
        lists = ", ".join(n for n in _lists(report.index) if n != "index.csv")
        console.print(f"lists beside it: {lists}", highlight=False, markup=False)


# -- show ----------------------------------------------------------------------------------


def show_json(result: ShowResult) -> dict[str, Any]:
    return {
        "command": "show",
        "image_id": result.image_id,
        "shard": result.shard,
        "source": result.source,
        "width": result.width,
        "height": result.height,
        "count": len(result.masks),
        "area_total": sum(m["area"] or 0 for m in result.masks),
        "masks": result.masks,
    }
