"""What one verify run is asked to do (each stage keeps its config in its config.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sa1b_cli.core.selection import Selection

__all__ = ["VerifyConfig"]


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    root: Path
    selection: Selection
    checksums: tuple[str, ...] = ()
    deep: bool = False
    decode_masks: bool = False
    jobs: int = max(1, os.cpu_count() or 1)
    export: Path | None = None
    export_algo: str = "xxh128"
    known: bool | None = None  # community md5 list: True fetches it, None uses it when cached
