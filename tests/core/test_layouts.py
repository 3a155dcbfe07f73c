"""The one table of where each layout puts a shard's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sa1b_cli.core.layouts import Layout, Only, shard_dirs

OUT = Path("/out")
NAME = "sa_000007.tar"


@pytest.mark.parametrize(
    ("layout", "jpg", "json"),
    [
        (Layout.SHARD, "sa_000007", "sa_000007"),
        (Layout.SPLIT, "images/sa_000007", "annotations/sa_000007"),
        (Layout.FLAT, "", ""),
        (Layout.IMAGES_MASKS, "images", "masks"),
    ],
)
def test_each_layout_puts_a_shard_s_files_where_its_readers_look(layout, jpg, json):
    assert shard_dirs(OUT, NAME, layout, None) == {"jpg": OUT / jpg, "json": OUT / json}
    assert shard_dirs(OUT, NAME, layout, Only.IMAGES) == {"jpg": OUT / jpg}
    assert shard_dirs(OUT, NAME, layout, Only.ANNOTATIONS) == {"json": OUT / json}


def test_what_each_layout_shares_and_how_sam2_names_its_files():
    assert {layout for layout in Layout if layout.shared} == {Layout.FLAT, Layout.IMAGES_MASKS}
    assert {layout for layout in Layout if layout.names_with_shard} == {
        Layout.SHARD,
        Layout.SPLIT,
    }
    assert [str(layout) for layout in Layout] == [
        "shard",
        "split",
        "flat",
        "images-masks",
        "webdataset",
    ]
