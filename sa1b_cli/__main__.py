"""Entry point for ``python -m sa1b_cli``."""

from __future__ import annotations

from sa1b_cli.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
