"""One exit-code rule for every command."""

from __future__ import annotations

from sa1b_cli.core.events import Outcome
from sa1b_cli.core.results import INTERRUPTED, ShardResult, exit_code
from sa1b_cli.extract.shard import ExtractResult
from sa1b_cli.verify.layers import VerifyResult


def test_one_rule_for_download_verify_and_extract():
    good: list[Outcome] = [
        ShardResult("a", "downloaded"),
        ExtractResult("b", "present"),
        VerifyResult("c", "ok"),
    ]
    assert exit_code(good) == 0
    assert exit_code([]) == 0
    assert exit_code([*good, VerifyResult("d", "digest_mismatch")]) == 1
    assert exit_code([*good, ShardResult("e", "expired")]) == 1
    stopped: list[Outcome] = [ShardResult("f", "failed"), ExtractResult("g", "interrupted")]
    assert exit_code(stopped) == INTERRUPTED == 130
