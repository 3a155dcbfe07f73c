"""The ``sa1b`` console script: answers ``--version`` before anything heavy is imported."""

from __future__ import annotations

import signal
import sys

__all__ = ["main"]


def main() -> None:
    if sys.argv[1:] == ["--version"]:  # scripts ask this often; typer costs more than the answer
        from sa1b_cli import __version__

        sys.stdout.write(f"sa1b {__version__}\n")
        return
    # From the first instruction, scancel's TERM and SLURM's time-limit USR1 stop sa1b the
    # way Ctrl-C does (cleanly, exit 130), even while the imports below are still running.
    for stop_signal in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(stop_signal, signal.default_int_handler)
    try:
        from sa1b_cli.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:  # the work is over: a signal now must not kill the exit (and its exit code)
        for stop_signal in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(stop_signal, signal.SIG_IGN)
