"""The sa1b command line: options -> config -> one library call -> render -> exit code.

Start-up matters (``status`` and ``--version`` should answer at once), so rich, asyncio and
every stage are imported inside the command that needs them, never at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from sa1b_cli import __version__
from sa1b_cli.core.config import (
    DEFAULT_CONNECTIONS,
    DEFAULT_JOBS,
    DEFAULT_ROOT,
    parse_rate,
    resolve_links,
)
from sa1b_cli.core.errors import Sa1bError, UsageError
from sa1b_cli.core.events import NullSink, ProgressSink
from sa1b_cli.core.manifest import read_manifest, redact_text
from sa1b_cli.core.results import INTERRUPTED, exit_code
from sa1b_cli.core.selection import Selection, parse_selection
from sa1b_cli.core.store import Store
from sa1b_cli.core.text import escaped
from sa1b_cli.options import (
    DEFAULT_VERIFY_JOBS,
    AlgoOpt,
    ArrivalKnownOpt,
    ChecksumsOpt,
    ConnectionsOpt,
    DecodeOpt,
    DeepOpt,
    DeleteTarOpt,
    ExportOpt,
    ExtractFlagOpt,
    ExtractJobsOpt,
    ImageArg,
    JobsOpt,
    JsonOpt,
    KnownOpt,
    LayoutOpt,
    LinksOpt,
    ManifestArg,
    NoSplitOpt,
    OnlyOpt,
    OutlinesOpt,
    OutOpt,
    PartOpt,
    PngOpt,
    QuietOpt,
    RateOpt,
    RetriesOpt,
    RootOpt,
    SalvageOpt,
    SeedOpt,
    ShardOpt,
    ShardsOpt,
    StatsJsonOpt,
    SubsetOpt,
    TimeoutOpt,
    VerifyJobsOpt,
    WorkersOpt,
)

__all__ = ["app", "main"]

if TYPE_CHECKING:
    import asyncio

    from rich.console import Console

    from sa1b_cli.core.layouts import Layout, Only
    from sa1b_cli.download.config import DownloadConfig
    from sa1b_cli.download.engine import DownloadReport
    from sa1b_cli.extract import ExtractConfig, ExtractReport

T = TypeVar("T")
app = typer.Typer(
    name="sa1b",
    help="Download, verify and extract Meta's SA-1B dataset: resumable, checked, concurrent.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},  # -h is what people type first
)


@cache
def _err() -> Console:
    from rich.console import Console

    if sys.stderr.isatty():
        return Console(stderr=True)
    # A pipe, a CI or SLURM log: one event, one line, never wrapped at 80 columns (grep).
    return Console(stderr=True, soft_wrap=True, width=_LOG_WIDTH)


_LOG_WIDTH = 1000  # wide enough that no table cell or message is folded in a log


@cache
def _out() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else _LOG_WIDTH)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"sa1b {__version__}\n")
        raise typer.Exit(0)


DebugOpt = Annotated[bool, typer.Option("--debug", envvar="SA1B_DEBUG", help="Show tracebacks.")]
VersionOpt = Annotated[
    bool,
    typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version."),
]


@app.callback()
def _root_callback(debug: DebugOpt = False, version: VersionOpt = False) -> None:
    """Download, verify and extract Meta's SA-1B dataset.

    Start with [bold]sa1b links[/] to inspect your manifest.
    Then run [bold]sa1b download --subset 1%[/].
    """
    if debug:
        os.environ["SA1B_DEBUG"] = "1"


def _selection(subset: str | None, shards: str | None, part: str | None) -> Selection:
    return parse_selection(subset, shards, part, env=os.environ)


def _emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _warn(text: str) -> None:
    _err().print(f"[yellow]{text}[/]")


def _run_interruptible(factory: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run the async core; the first Ctrl-C (or SIGTERM) asks it to stop and keep progress."""
    import asyncio

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def first_interrupt() -> None:
            stop.set()
            _warn("stopping: saving progress (Ctrl-C again to abort at once)")
            loop.remove_signal_handler(signal.SIGINT)

        loop.add_signal_handler(signal.SIGINT, first_interrupt)
        for stop_signal in STOP_SIGNALS:
            loop.add_signal_handler(stop_signal, stop.set)
        try:
            return await factory(stop)
        finally:
            for handled in (signal.SIGINT, *STOP_SIGNALS):
                loop.remove_signal_handler(handled)
                if handled != signal.SIGINT:  # back to a clean stop outside the loop too
                    signal.signal(handled, signal.default_int_handler)

    try:
        return asyncio.run(runner())
    except KeyboardInterrupt:
        _warn("aborted; bytes up to the last checkpoint are kept")
        raise typer.Exit(INTERRUPTED) from None


@contextlib.contextmanager
def _progress(as_json: bool, quiet: bool, expiry: datetime | None = None) -> Iterator[ProgressSink]:
    """The live display on a terminal, plain lines in logs and pipes, nothing for --json/-q."""
    if as_json or quiet:
        yield NullSink()
        return
    from sa1b_cli import ui

    sink: ui.RichSink | ui.PlainSink
    if _err().is_terminal and sys.stdout.isatty():
        sink = ui.RichSink(_err(), expiry=expiry)
    else:
        sink = ui.PlainSink(_err())
    with sink:
        yield sink


def _finish(
    code: int,
    as_json: bool,
    quiet: bool,
    to_json: Callable[[], dict[str, Any]],
    render: Callable[[], None],
) -> NoReturn:
    """The end every command shares: one JSON report, or the rendering (always on failure)."""
    if as_json:
        _emit_json(to_json())
    elif not quiet or code:
        render()
    raise typer.Exit(code)


# -- links ---------------------------------------------------------------------------------


@app.command()
def links(
    manifest: ManifestArg = None,
    root: RootOpt = DEFAULT_ROOT,
    links_file: LinksOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Inspect a manifest: rows, kinds, missing shards, expiry and warnings.

    The manifest is given as an argument or with --links, like every other command.
    Signed query strings are never shown.
    """
    from sa1b_cli import ui

    parsed = read_manifest(resolve_links(manifest or links_file, root))
    summary = ui.manifest_summary(parsed, now=time.time())
    if as_json:
        _emit_json(summary)
    else:
        ui.print_manifest_summary(_out(), summary)
    raise typer.Exit(0)


# -- download ------------------------------------------------------------------------------


@app.command()
def download(
    root: RootOpt = DEFAULT_ROOT,
    links: LinksOpt = None,
    subset: SubsetOpt = None,
    shards: ShardsOpt = None,
    part: PartOpt = None,
    jobs: JobsOpt = DEFAULT_JOBS,
    connections: ConnectionsOpt = DEFAULT_CONNECTIONS,
    no_split: NoSplitOpt = False,
    max_rate: RateOpt = None,
    timeout: TimeoutOpt = 30.0,
    retries: RetriesOpt = 8,
    workers: WorkersOpt = 1,
    checksums: ChecksumsOpt = None,
    known_on_arrival: ArrivalKnownOpt = False,
    extract: ExtractFlagOpt = False,
    out_dir: OutOpt = None,
    layout: LayoutOpt = "shard",
    only: OnlyOpt = None,
    delete_tar: DeleteTarOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download shards with resume, retries and on-arrival checksums.

    Run it again at any time: finished shards are kept, partial ones continue.
    A fresh manifest (--links NEW) continues the same partial files.
    """
    from sa1b_cli.download.config import DownloadConfig

    config = DownloadConfig(
        root=root,
        links=resolve_links(links, root),
        selection=_selection(subset, shards, part),
        jobs=jobs,
        checksums=tuple(checksums or ()),
        max_rate=parse_rate(max_rate),
        timeout=timeout,
        max_attempts=retries,
        connections=connections,
        split=not no_split,
        known=known_on_arrival,
    )
    _layout_and_only(layout, only)  # bad values fail even without --extract
    xconfig = (
        _extract_config(
            root, config.selection, out_dir, layout, only, DEFAULT_VERIFY_JOBS, delete_tar
        )
        if extract
        else None
    )
    expiry = read_manifest(config.links).expiry_window()
    started = time.monotonic()
    with _progress(as_json, quiet, expiry[0] if expiry else None) as sink:
        report, extraction = _run_download(config, xconfig, workers, sink)
    code = exit_code(report.results)
    if extraction is not None and code == 0:
        code = extraction.exit_code
    elapsed = time.monotonic() - started
    if as_json or not quiet or code:
        from sa1b_cli import ui  # rich loads only when something is shown

    def to_json() -> dict[str, Any]:
        payload = ui.download_json(report, code, elapsed)
        if extraction is not None:
            payload["extract"] = ui.extract_json(extraction)
        return payload

    def render() -> None:
        ui.print_download_summary(_err(), report, elapsed=elapsed)
        if extraction is not None and xconfig is not None:
            ui.print_extract_report(_err(), extraction, out=xconfig.out_dir)

    _finish(code, as_json, quiet, to_json, render)


def _run_download(
    config: DownloadConfig, xconfig: ExtractConfig | None, workers: int, sink: ProgressSink
) -> tuple[DownloadReport, ExtractReport | None]:
    """One process with an event loop, or several; extraction pipelined when asked for."""
    from sa1b_cli.download import run_downloads

    if workers > 1:
        return _run_workers(config, xconfig, workers, sink)
    if xconfig is not None:
        from sa1b_cli.pipeline import download_and_extract

        return _run_interruptible(
            lambda stop: download_and_extract(config, xconfig, sink=sink, stop=stop)
        )
    return _run_interruptible(lambda stop: run_downloads(config, sink=sink, stop=stop)), None


def _run_workers(
    config: DownloadConfig, xconfig: ExtractConfig | None, workers: int, sink: ProgressSink
) -> tuple[DownloadReport, ExtractReport | None]:
    """Several processes; the first Ctrl-C asks them to checkpoint and stop."""
    from sa1b_cli.workers import run_download_workers

    with _stop_on_signals() as stopping:
        return run_download_workers(config, workers, sink=sink, stop=stopping, extract=xconfig)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """For work that polls: the first Ctrl-C (or SIGTERM) only asks it to stop.

    Raised as KeyboardInterrupt, a Ctrl-C can land anywhere: in a fork handler of a worker
    pool, which swallows it, or in the middle of a print. The second Ctrl-C still aborts.
    """
    import threading

    stopping = threading.Event()

    def on_interrupt(signum: int, frame: object) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        _warn("stopping: saving progress (Ctrl-C again to abort at once)")

    def on_stop(signum: int, frame: object) -> None:
        stopping.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, on_stop)
    try:
        yield stopping.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.default_int_handler)


# -- verify ----------------------------------------------------------------------------------


@app.command()
def verify(
    root: RootOpt = DEFAULT_ROOT,
    subset: SubsetOpt = None,
    shards: ShardsOpt = None,
    part: PartOpt = None,
    checksums: ChecksumsOpt = None,
    known: KnownOpt = None,
    deep: DeepOpt = False,
    decode_masks: DecodeOpt = False,
    jobs: VerifyJobsOpt = DEFAULT_VERIFY_JOBS,
    export: ExportOpt = None,
    algo: AlgoOpt = "xxh128",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check shards on disk: size and xxh3-128 as recorded, any --checksums lists, known md5s.

    --known fetches the community md5 list once; after that every verify uses it.

    With --deep, also every image and mask.
    Failed shards are fetched again by the next download.
    """
    if algo not in ("md5", "sha256", "xxh128"):
        msg = f"--algo {algo!r}: use md5, sha256 or xxh128"
        raise UsageError(msg, hint="For example --algo md5.")
    from sa1b_cli.verify import VerifyConfig, verify_shards

    config = VerifyConfig(
        root=root,
        selection=_selection(subset, shards, part),
        checksums=tuple(checksums or ()),
        deep=deep,
        decode_masks=decode_masks,
        jobs=jobs,
        export=export,
        export_algo=algo,
        known=known,
    )
    with _progress(as_json, quiet) as sink:
        report = verify_shards(config, sink=sink)
    if as_json or not quiet or report.exit_code:
        from sa1b_cli import ui  # rich loads only when something is shown
    _finish(
        report.exit_code,
        as_json,
        quiet,
        lambda: ui.verify_json(report),
        lambda: ui.print_verify_report(_out(), report, deep=deep),
    )


# -- extract ---------------------------------------------------------------------------------


def _layout_and_only(layout: str, only: str | None) -> tuple[Layout, Only | None]:
    from sa1b_cli.core.layouts import Layout, Only  # not the extract stage: start-up matters

    try:
        chosen = Layout(layout)
    except ValueError:
        msg = f"--layout {layout!r}: use {', '.join(Layout)}"
        raise UsageError(msg, hint="sa1b extract --help describes each layout.") from None
    try:
        return chosen, None if only is None else Only(only)
    except ValueError:
        msg = f"--only {only!r}: use images or annotations"
        raise UsageError(msg, hint="Leave --only out to extract both.") from None


def _extract_config(
    root: Path,
    selection: Selection,
    out: Path | None,
    layout: str,
    only: str | None,
    jobs: int,
    delete_tar: bool,
) -> ExtractConfig:
    from sa1b_cli.extract import ExtractConfig

    chosen, kept = _layout_and_only(layout, only)
    return ExtractConfig(
        root=root,
        selection=selection,
        out=out,
        layout=chosen,
        only=kept,
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
    jobs: ExtractJobsOpt = DEFAULT_VERIFY_JOBS,
    delete_tar: DeleteTarOpt = False,
    salvage: SalvageOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Extract downloaded shards into one of five layouts, with a per-shard index.

    Each shard appears whole or not at all.
    Run it again to skip finished shards and redo interrupted ones.
    """
    from sa1b_cli import ui
    from sa1b_cli.extract import extract_shards

    config = _extract_config(
        root, _selection(subset, shards, part), out_dir, layout, only, jobs, delete_tar
    )
    config = dataclasses.replace(config, salvage=salvage)
    with _progress(as_json, quiet) as sink, _stop_on_signals() as stopping:
        report = extract_shards(config, sink=sink, stop=stopping)
    _finish(
        report.exit_code,
        as_json,
        quiet,
        lambda: ui.extract_json(report),
        lambda: ui.print_extract_report(_err(), report, out=config.out_dir),
    )


# -- status --------------------------------------------------------------------------------


# -- show ----------------------------------------------------------------------------------


@app.command()
def show(
    image: ImageArg,
    root: RootOpt = DEFAULT_ROOT,
    out_dir: OutOpt = None,
    shard: ShardOpt = None,
    output: PngOpt = None,
    outlines: OutlinesOpt = False,
    seed: SeedOpt = 0,
    as_json: StatsJsonOpt = False,
) -> None:
    """Draw one image with its masks over it (largest first, a colour each) and print the path.

    Reads an extracted layout, or the downloaded tar of --shard.
    """
    from sa1b_cli.show.image import ShowConfig, parse_image_id, show_image

    config = ShowConfig(
        root=root,
        image_id=parse_image_id(image),
        out=out_dir or root / "extracted",
        shard=_shard_name(shard) if shard else None,
        output=output,
        outlines=outlines,
        seed=seed,
        draw=not as_json,
    )
    result = show_image(config)
    if as_json:
        from sa1b_cli import ui

        _emit_json(ui.show_json(result))
    else:
        sys.stdout.write(f"{result.png}\n")
    raise typer.Exit(0)


def _shard_name(text: str) -> str:
    names = parse_selection(None, text, env={}).names
    if not names or len(names) != 1:
        msg = f"--shard {text!r}: name one shard, for example 0 or sa_000000"
        raise UsageError(msg)
    return names[0]


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
        from sa1b_cli import ui

        _emit_json(ui.status_json(states, root=root))
    elif not states:  # the empty root answers without loading rich
        sys.stdout.write(f"nothing here yet: {root} holds no shards; run sa1b download to start\n")
    else:
        from sa1b_cli import ui

        ui.print_status(_out(), states, root=root)
    raise typer.Exit(0)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # scancel; SLURM's --signal=B:USR1@120


def main() -> None:
    """Console entry point: renders every error once, redacted, and picks the exit code."""
    for stop_signal in STOP_SIGNALS:  # the download loop installs its own graceful handlers
        signal.signal(stop_signal, signal.default_int_handler)
    try:
        code = app(standalone_mode=False)  # typer's usage errors reach us, one style for all
    except KeyboardInterrupt:
        _interrupted()
    except Sa1bError as exc:
        if os.environ.get("SA1B_DEBUG"):
            raise
        _print_error("error", exc.message, exc.hint, code=exc.exit_code)
        sys.exit(exc.exit_code)
    except OSError as exc:  # permissions, a vanished folder: the system's words, no traceback
        if os.environ.get("SA1B_DEBUG"):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        hint = "Check the path and its permissions; progress so far is kept. --debug shows more."
        _print_error("error", f"{exc.strerror or exc}{where}", hint, code=1)
        sys.exit(1)
    except Exception as exc:  # the one place that renders the unexpected
        if type(exc).__name__ == "Abort":  # click's word for a KeyboardInterrupt it caught
            _interrupted()
        _exit_for_usage_error(exc)
        if os.environ.get("SA1B_DEBUG"):
            raise
        hint = "Progress so far is kept; rerun with --debug for the traceback and report it."
        _print_error("unexpected error", f"{type(exc).__name__}: {exc}", hint, code=1)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> NoReturn:
    _warn("interrupted: finished work is kept; run the same command again to continue")
    sys.exit(INTERRUPTED)


def _exit_for_usage_error(exc: Exception) -> None:
    """Typer's own usage errors (``--jobs 0``), told in sa1b's style; returns for any other.

    They are recognised by their interface (``format_message``, ``exit_code``, ``ctx``)
    rather than by class: typer vendors click, and its classes are not public API.
    """
    message = getattr(exc, "format_message", None)
    code = getattr(exc, "exit_code", None)
    if not callable(message) or not isinstance(code, int):
        return
    if type(exc).__name__ == "NoArgsIsHelpError":  # `sa1b download` alone: show the help
        exc.show()  # type: ignore[attr-defined]
        sys.exit(code)
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", "sa1b")
    hint = f"Run `{command} --help` to see what each option accepts."
    if str(message()).startswith("No such command"):
        names = ", ".join(
            c.name or c.callback.__name__ for c in app.registered_commands if c.callback
        )
        hint = f"The commands are {names}; `sa1b --help` says what each does."
    _print_error("error", str(message()), hint, code=code)
    sys.exit(code)


def _print_error(label: str, message: str, hint: str | None, *, code: int) -> None:
    """The one place errors are rendered: redacted, on stderr, and as JSON with --json."""
    from rich.text import Text

    # A path the user gave may hold escapes too (a file name from an archive, say).
    message, hint = escaped(redact_text(message)), escaped(redact_text(hint or ""))
    if "--json" in sys.argv[1:]:  # scripts read one object on stdout, success or not
        _emit_json({"error": message, "hint": hint, "exit_code": code})
    _err().print(Text(f"{label}: ", style="bold red").append(message, style=""), highlight=False)
    if hint:
        _err().print(Text("hint: ", style="dim").append(hint), highlight=False)
