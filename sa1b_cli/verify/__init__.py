"""Stage 2, verify: check downloaded shards (size, recorded digests, checksum lists) and,
with ``deep``, every gzip block, tar header, JSON, RLE mask and JPEG size; one result per shard.
"""

from __future__ import annotations

from sa1b_cli.verify.config import VerifyConfig
from sa1b_cli.verify.layers import (
    VerifyReport,
    VerifyResult,
    VerifyStatus,
    verify_shards,
)

__all__ = ["VerifyConfig", "VerifyReport", "VerifyResult", "VerifyStatus", "verify_shards"]
