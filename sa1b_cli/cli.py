"""The sa1b command line: options -> config -> one library call -> render -> exit code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from sa1b_cli import __version__, ui
from sa1b_cli.core.config import (
    DEFAULT_JOBS,
    DEFAULT_ROOT,
    DownloadConfig,
    parse_rate,
    resolve_links,
)
from sa1b_cli.core.errors import Sa1bError, UsageError
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.manifest import read_manifest, redact_text
from sa1b_cli.core.results import download_exit_code
from sa1b_cli.core.selection import Selection, parse_selection
from sa1b_cli.core.store import Store
from sa1b_cli.extract.shard import ExtractConfig, Layout, Only

__all__ = ["app", "main"]

if TYPE_CHECKING:
    from sa1b_cli.download.engine import DownloadReport
    from sa1b_cli.extract.pool import ExtractReport

# Each command imports its own engine: `verify` never loads httpx, `download` never numpy.
T = TypeVar("T")
DEFAULT_VERIFY_JOBS = max(1, os.cpu_count() or 1)
app = typer.Typer(
    name="sa1b",
    help="Download, verify and extract Meta's SA-1B dataset: resumable, checked, concurrent.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True)
out = Console(soft_wrap=True)

RootOpt = Annotated[
    Path,
    typer.Option(
        "--root",
        envvar="SA1B_ROOT",
        help="Folder that holds everything sa1b owns (tars, records, extracted).",
    ),
]
LinksOpt = Annotated[
    Path | None,
    typer.Option(
        "--links",
        envvar="SA1B_LINKS",
        show_default=False,
        help="Meta's manifest. Default: links/segment_anything_links.txt, else the root's copy.",
    ),
]
SubsetOpt = Annotated[
    str | None,
    typer.Option(help="A share (1% = 10 shards) or a count; always the lowest-numbered shards."),
]
ShardsOpt = Annotated[
    str | None,
    typer.Option(help="Explicit shards: 0-9,20,sa_000031 or aux names (sa_images_ids.txt)."),
]
PartOpt = Annotated[
    str | None,
    typer.Option(help="Take part I/N of the selection; 'auto' reads SLURM_ARRAY_TASK_*."),
]
JobsOpt = Annotated[
    int,
    typer.Option(
        "--jobs", "-j", min=1, max=64, envvar="SA1B_JOBS", help="Shards worked on at once."
    ),
]
ChecksumsOpt = Annotated[
    list[str] | None,
    typer.Option(help="\\[alg:]FILE in md5sum, sha256sum, xxhsum or BSD-tag format. Repeatable."),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable report on stdout.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
DebugOpt = Annotated[bool, typer.Option("--debug", envvar="SA1B_DEBUG", help="Show tracebacks.")]


def _print_version(value: bool) -> None:
    if value:
        out.print(f"sa1b {__version__}")
        raise typer.Exit(0)


VersionOpt = Annotated[
    bool,
    typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version."),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        max=64,
        envvar="SA1B_WORKERS",
        help="Processes, each with its own event loop and a share of the shards.",
    ),
]
ExtractFlagOpt = Annotated[
    bool,
    typer.Option("--extract", help="Extract each shard as soon as it is downloaded and checked."),
]
ManifestArg = Annotated[
    Path | None, typer.Argument(help="The manifest to inspect.", show_default=False)
]
RateOpt = Annotated[
    str | None,
    typer.Option(envvar="SA1B_MAX_RATE", help="Cap the total rate in bytes/s: 200M, 1.5G, 50MiB."),
]
TimeoutOpt = Annotated[
    float, typer.Option(min=1.0, help="Drop and resume a connection silent this many seconds.")
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        envvar="SA1B_OUT",
        show_default=False,
        help="Where to extract (default: <root>/extracted).",
    ),
]
LayoutOpt = Annotated[
    str,
    typer.Option(
        "--layout",
        help="shard: <out>/sa_000000/sa_1.jpg; "
        "split: <out>/images/sa_000000/ and <out>/annotations/sa_000000/.",
    ),
]
OnlyOpt = Annotated[str | None, typer.Option("--only", help="Extract only images or annotations.")]
DeleteTarOpt = Annotated[
    bool,
    typer.Option(
        "--delete-tar",
        help="Delete each tar once its extraction is complete (it is never fetched again).",
    ),
]


_LAYOUTS: dict[str, Layout] = {"shard": "shard", "split": "split"}
_ONLY: dict[str | None, Only | None] = {
    None: None,
    "images": "images",
    "annotations": "annotations",
}


@app.callback()
def _root_callback(debug: DebugOpt = False, version: VersionOpt = False) -> None:
    """Download, verify and extract Meta's SA-1B dataset.

    Start with [bold]sa1b links[/] to inspect your manifest,
    then [bold]sa1b download --subset 1%[/].
    """
    if debug:
        os.environ["SA1B_DEBUG"] = "1"


def _selection(subset: str | None, shards: str | None, part: str | None) -> Selection:
    return parse_selection(subset, shards, part, env=os.environ)


def _emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _run_interruptible(factory: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run the async core; the first Ctrl-C (or SIGTERM) asks it to stop and keep progress."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def first_interrupt() -> None:
            stop.set()
            err.print("[yellow]stopping: saving progress (Ctrl-C again to abort at once)[/]")
            loop.remove_signal_handler(signal.SIGINT)

        loop.add_signal_handler(signal.SIGINT, first_interrupt)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            return await factory(stop)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(runner())
    except KeyboardInterrupt:
        err.print("[yellow]aborted; bytes up to the last checkpoint are kept[/]")
        raise typer.Exit(130) from None


# -- links ---------------------------------------------------------------------------------


@app.command()
def links(
    manifest: ManifestArg = None,
    root: RootOpt = DEFAULT_ROOT,
    as_json: JsonOpt = False,
) -> None:
    """Inspect a manifest: rows, kinds, missing shards, expiry and warnings (never signatures)."""
    parsed = read_manifest(resolve_links(manifest, root))
    summary = ui.manifest_summary(parsed, now=time.time())
    if as_json:
        _emit_json(summary)
    else:
        ui.print_manifest_summary(out, summary)
    raise typer.Exit(0)


# -- download ------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(as_json: bool, quiet: bool, expiry: datetime | None = None) -> Iterator[ProgressSink]:
    """The live display on a terminal, plain lines in logs and pipes, nothing for --json/-q."""
    if as_json or quiet:
        yield NullSink()
        return
    sink: ui.RichSink | ui.PlainSink
    if err.is_terminal and sys.stdout.isatty():
        sink = ui.RichSink(err, expiry=expiry)
    else:
        sink = ui.PlainSink(err)
    with sink:
        yield sink


@app.command()
def download(
    root: RootOpt = DEFAULT_ROOT,
    links: LinksOpt = None,
    subset: SubsetOpt = None,
    shards: ShardsOpt = None,
    part: PartOpt = None,
    jobs: JobsOpt = DEFAULT_JOBS,
    checksums: ChecksumsOpt = None,
    max_rate: RateOpt = None,
    timeout: TimeoutOpt = 30.0,
    workers: WorkersOpt = 1,
    extract: ExtractFlagOpt = False,
    out_dir: OutOpt = None,
    layout: LayoutOpt = "shard",
    only: OnlyOpt = None,
    delete_tar: DeleteTarOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download shards with resume, retries and on-arrival checksums.

    Run it again at any time (or with a fresh manifest via --links): finished shards are
    kept, partial ones continue where they stopped.
    """
    config = DownloadConfig(
        root=root,
        links=resolve_links(links, root),
        selection=_selection(subset, shards, part),
        jobs=jobs,
        checksums=tuple(checksums or ()),
        max_rate=parse_rate(max_rate),
        timeout=timeout,
    )
    xconfig = _extract_config(
        root, config.selection, out_dir, layout, only, DEFAULT_VERIFY_JOBS, delete_tar
    )
    expiry = read_manifest(config.links).expiry_window()
    started = time.monotonic()
    with _progress(as_json, quiet, expiry[0] if expiry else None) as sink:
        report, extraction = _run_download(config, xconfig if extract else None, workers, sink)
    code = download_exit_code(report.results)
    if extraction is not None and code == 0:
        code = extraction.exit_code
    if as_json:
        payload = _download_json(report, code, time.monotonic() - started)
        if extraction is not None:
            payload["extract"] = ui.extract_json(extraction)
        _emit_json(payload)
    elif not quiet or code:
        ui.print_download_summary(err, report, elapsed=time.monotonic() - started)
        if extraction is not None:
            ui.print_extract_report(err, extraction, out=xconfig.out_dir)
    raise typer.Exit(code)


def _run_download(
    config: DownloadConfig, xconfig: ExtractConfig | None, workers: int, sink: ProgressSink
) -> tuple[DownloadReport, ExtractReport | None]:
    """One process with an event loop, or several; extraction pipelined when asked for."""
    from sa1b_cli.download.engine import run_downloads
    from sa1b_cli.pipeline import download_and_extract

    if workers > 1:
        return _run_workers(config, xconfig, workers, sink)
    if xconfig is not None:
        return _run_interruptible(
            lambda stop: download_and_extract(config, xconfig, sink=sink, stop=stop)
        )
    return _run_interruptible(lambda stop: run_downloads(config, sink=sink, stop=stop)), None


def _run_workers(
    config: DownloadConfig, xconfig: ExtractConfig | None, workers: int, sink: ProgressSink
) -> tuple[DownloadReport, ExtractReport | None]:
    """Several processes; the first Ctrl-C asks them to checkpoint and stop."""
    from sa1b_cli.workers import run_download_workers

    stopping = threading.Event()

    def on_interrupt(signum: int, frame: object) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        err.print("[yellow]stopping: saving progress (Ctrl-C again to abort at once)[/]")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        return run_download_workers(
            config, workers, sink=sink, stop=stopping.is_set, extract=xconfig
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def _download_json(report: DownloadReport, code: int, elapsed: float) -> dict[str, Any]:
    return {
        "command": "download",
        "exit_code": code,
        "elapsed_seconds": round(elapsed, 3),
        "bytes_fetched": sum(r.bytes_fetched for r in report.results),
        "links_expire": report.expiry[0].isoformat() if report.expiry else None,
        "shards": [{**asdict(r), "digests": dict(r.digests)} for r in report.results],
    }


# -- verify ----------------------------------------------------------------------------------

DeepOpt = Annotated[
    bool,
    typer.Option(
        "--deep",
        help="Also check the content: gzip, tar, JSON, "
        "RLE masks, JPEG sizes. Uses every core (--jobs).",
    ),
]
DecodeOpt = Annotated[
    bool,
    typer.Option(
        "--decode-masks",
        help="With --deep, fully decode every mask (exact h x w check; about 2 ms a mask).",
    ),
]
ExportOpt = Annotated[
    Path | None,
    typer.Option(
        "--export",
        help="Write a checksum list of the shards that passed, in the format of the --algo tool.",
    ),
]
AlgoOpt = Annotated[
    str, typer.Option("--algo", help="Algorithm for --export: md5, sha256, xxh128.")
]


@app.command()
def verify(
    root: RootOpt = DEFAULT_ROOT,
    subset: SubsetOpt = None,
    shards: ShardsOpt = None,
    part: PartOpt = None,
    checksums: ChecksumsOpt = None,
    deep: DeepOpt = False,
    decode_masks: DecodeOpt = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            max=64,
            help="Processes for --deep, files hashed at once otherwise.",
        ),
    ] = DEFAULT_VERIFY_JOBS,
    export: ExportOpt = None,
    algo: AlgoOpt = "xxh128",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check shards on disk: size and xxh3-128 as recorded, --checksums lists, and with --deep
    every image and mask. Failed shards are fetched again by the next download."""
    if algo not in ("md5", "sha256", "xxh128"):
        msg = f"--algo {algo!r}: use md5, sha256 or xxh128"
        raise UsageError(msg, hint="For example --algo md5.")
    from sa1b_cli.verify.layers import VerifyConfig, verify_shards

    config = VerifyConfig(
        root=root,
        selection=_selection(subset, shards, part),
        checksums=tuple(checksums or ()),
        deep=deep,
        decode_masks=decode_masks,
        jobs=jobs,
        export=export,
        export_algo=algo,
    )
    with _progress(as_json, quiet) as sink:
        report = verify_shards(config, sink=sink)
    if as_json:
        _emit_json(ui.verify_json(report))
    elif not quiet or report.exit_code:
        ui.print_verify_report(out, report, deep=deep)
    raise typer.Exit(report.exit_code)


# -- extract ---------------------------------------------------------------------------------


def _extract_config(
    root: Path,
    selection: Selection,
    out: Path | None,
    layout: str,
    only: str | None,
    jobs: int,
    delete_tar: bool,
) -> ExtractConfig:
    if layout not in _LAYOUTS:
        msg = f"--layout {layout!r}: use shard or split"
        raise UsageError(msg)
    if only not in _ONLY:
        msg = f"--only {only!r}: use images or annotations"
        raise UsageError(msg)
    return ExtractConfig(
        root=root,
        selection=selection,
        out=out,
        layout=_LAYOUTS[layout],
        only=_ONLY[only],
        jobs=jobs,
        delete_tar=delete_tar,
    )


@app.command()
def extract(
    root: RootOpt = DEFAULT_ROOT,
    subset: SubsetOpt = None,
    shards: ShardsOpt = None,
    part: PartOpt = None,
    out_dir: OutOpt = None,
    layout: LayoutOpt = "shard",
    only: OnlyOpt = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs", "-j", min=1, max=64, help="Shards extracted at once (one process each)."
        ),
    ] = DEFAULT_VERIFY_JOBS,
    delete_tar: DeleteTarOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Extract downloaded shards into a sharded layout with a per-shard index.

    Each shard appears whole or not at all; run it again to skip finished shards and
    redo interrupted ones.
    """
    from sa1b_cli.extract.pool import extract_shards

    config = _extract_config(
        root, _selection(subset, shards, part), out_dir, layout, only, jobs, delete_tar
    )
    with _progress(as_json, quiet) as sink:
        report = extract_shards(config, sink=sink)
    if as_json:
        _emit_json(ui.extract_json(report))
    elif not quiet or report.exit_code:
        ui.print_extract_report(err, report, out=config.out_dir)
    raise typer.Exit(report.exit_code)


# -- status --------------------------------------------------------------------------------


@app.command()
def status(
    root: RootOpt = DEFAULT_ROOT,
    subset: SubsetOpt = None,
    shards: ShardsOpt = None,
    part: PartOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show each shard's state on the root: missing, partial (%), complete, failed, expired."""
    from sa1b_cli.core.status import selected_status

    states = selected_status(Store(root), _selection(subset, shards, part))
    if as_json:
        _emit_json(
            {
                "command": "status",
                "root": str(root),
                "shards": [{**asdict(s), "percent": s.percent} for s in states],
            }
        )
    else:
        ui.print_status(out, states, root=root)
    raise typer.Exit(0)


def main() -> None:
    """Console entry point: renders every error once, redacted, and picks the exit code."""
    try:
        app()
    except Sa1bError as exc:
        if os.environ.get("SA1B_DEBUG"):
            raise
        _print_error("error", exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except OSError as exc:  # permissions, a vanished folder: the system's words, no traceback
        if os.environ.get("SA1B_DEBUG"):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        hint = "Check the path and its permissions; progress so far is kept. --debug shows more."
        _print_error("error", f"{exc.strerror or exc}{where}", hint)
        sys.exit(1)
    except Exception as exc:  # the one place that renders the unexpected
        if os.environ.get("SA1B_DEBUG"):
            raise
        hint = "Progress so far is kept; rerun with --debug for the traceback and report it."
        _print_error("unexpected error", f"{type(exc).__name__}: {exc}", hint)
        sys.exit(1)


def _print_error(label: str, message: str, hint: str | None) -> None:
    text = Text(f"{label}: ", style="bold red").append(redact_text(message), style="")
    err.print(text, highlight=False)
    if hint:
        err.print(Text("hint: ", style="dim").append(redact_text(hint)), highlight=False)
