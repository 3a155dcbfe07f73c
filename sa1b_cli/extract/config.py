"""What one extract run is asked to do (each stage keeps its config in its config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sa1b_cli.core.layouts import Layout, Only
from sa1b_cli.core.selection import Selection

__all__ = ["ExtractConfig"]


@dataclass(frozen=True, slots=True)
class ExtractConfig:
    root: Path
    selection: Selection
    out: Path | None = None
    layout: Layout = Layout.SHARD
    only: Only | None = None
    jobs: int = 1
    delete_tar: bool = False
    salvage: bool = False  # damaged shards: write what is proven whole, say what was lost

    def __post_init__(self) -> None:  # library callers may pass the names as plain strings
        object.__setattr__(self, "layout", Layout(self.layout))
        if self.only is not None:
            object.__setattr__(self, "only", Only(self.only))

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else self.root / "extracted"
