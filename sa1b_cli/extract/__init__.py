"""Stage 3, extract: unpack checked shards into a layout training code reads, atomically per
shard (a completion marker written last), indexed, and never outside the output folder.
"""

from __future__ import annotations

from sa1b_cli.extract.config import ExtractConfig
from sa1b_cli.extract.pool import Extractor, ExtractReport, extract_shards
from sa1b_cli.extract.shard import ExtractResult, write_overall_index

__all__ = [
    "ExtractConfig",
    "ExtractReport",
    "ExtractResult",
    "Extractor",
    "extract_shards",
    "write_overall_index",
]
