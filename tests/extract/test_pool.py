"""Run-level checks of extraction: how many files a flat layout would put in one folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sa1b_cli.core.errors import UsageError
from sa1b_cli.core.layouts import Layout, Only
from sa1b_cli.core.selection import Selection
from sa1b_cli.extract.config import ExtractConfig
from sa1b_cli.extract.pool import _flat_check, _layout_check


def names(count: int) -> list[str]:
    return [f"sa_{k:06d}.tar" for k in range(count)]


def config(tmp_path: Path, layout: str = "flat", only: str | None = None) -> ExtractConfig:
    kept = None if only is None else Only(only)
    return ExtractConfig(
        tmp_path, Selection(None), out=tmp_path / "out", layout=Layout(layout), only=kept
    )


def test_flat_is_quiet_for_a_subset_and_warns_past_a_million_files(tmp_path: Path):
    assert _flat_check(config(tmp_path), names(10)) == ()  # 1%: ~224 k files
    (warning,) = _flat_check(config(tmp_path), names(50))  # 5%: ~1.1 M files
    assert "M files in one folder" in warning and "--layout shard" in warning
    assert _flat_check(config(tmp_path, layout="shard"), names(1000)) == ()


def test_flat_is_refused_past_what_lustre_allows_in_one_folder(tmp_path: Path):
    with pytest.raises(UsageError, match="Lustre"):
        _flat_check(config(tmp_path), names(1000))  # all of SA-1B: ~22 M files
    assert _flat_check(config(tmp_path, only="images"), names(600)) != ()  # ~6.7 M: a warning


def test_shards_already_extracted_count_too(tmp_path: Path):
    done = tmp_path / "out" / ".done"
    done.mkdir(parents=True)
    for name in names(600):
        (done / f"{name.removesuffix('.tar')}.json").write_text("{}")
    with pytest.raises(UsageError):
        _flat_check(config(tmp_path), names(100))  # 700 shards in one folder in all


@pytest.mark.parametrize(
    ("marker", "says", "hint"),
    [
        ({"layout": "split"}, "holds the split layout", "Extract with --layout split there"),
        ({"layout": 5}, "holds the unknown (5) layout", "Pass --out another folder."),
        ({"layout": "\x1b[2J"}, "unknown (\\x1b[2J)", "Pass --out another folder."),
    ],
)
def test_a_folder_of_another_layout_is_named_and_an_unknown_one_not_advised(
    tmp_path: Path, marker: dict[str, object], says: str, hint: str
):
    done = tmp_path / ".done"
    done.mkdir()
    (done / "sa_000000.json").write_text(json.dumps({"shard": "sa_000000.tar"} | marker))
    with pytest.raises(UsageError, match=re.escape(says)) as refused:
        _layout_check(tmp_path, "shard")
    assert refused.value.hint is not None and refused.value.hint.startswith(hint)


def test_a_marker_from_before_layouts_is_the_shard_layout(tmp_path: Path):
    done = tmp_path / ".done"
    done.mkdir()
    (done / "sa_000000.json").write_text(json.dumps({"shard": "sa_000000.tar", "images": 6}))
    _layout_check(tmp_path, "shard")  # it said "holds the None layout"
    with pytest.raises(UsageError, match="holds the shard layout"):
        _layout_check(tmp_path, "split")


def test_an_output_that_is_a_file_is_refused_before_any_shard(tmp_path: Path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(UsageError, match=r"the output .*/out is there, not a folder"):
        _layout_check(tmp_path / "out", "shard")
