"""The ``sa1b`` console script: answers ``--version`` before anything heavy is imported."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    if sys.argv[1:] == ["--version"]:  # scripts ask this often; typer costs more than the answer
        from sa1b_cli import __version__

        sys.stdout.write(f"sa1b {__version__}\n")
        return
    from sa1b_cli.cli import main as cli_main

    cli_main()
