"""A shard's index rows, read from a file sa1b wrote but the user's folder holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sa1b_cli.core.markers import MAX_ROW, index_rows, read_marker

HEADER = b"image_id,width,height,masks,jpg_bytes,json_bytes\n"
ROW = b"1,1500,2250,98,412345,233001\n"

CASES = [  # (what the file holds, the rows read)
    (HEADER + ROW + b"2,1,1,1,1,1", ["1,1500,2250,98,412345,233001", "2,1,1,1,1,1"]),
    (
        HEADER + b"1,2,3\n" + b"1,2,3,4,5,6,7\n" + b"-1,2,3,4,5,6\n" + b"\n" + ROW,
        [ROW[:-1].decode()],
    ),
    (HEADER + b"\xff\xfe,1\n" + b"1,\x1b[2J,1,1,1,1\n" + ROW, [ROW[:-1].decode()]),
    (
        HEADER + "\u0661,\u0662,\u0663,\u0664,\u0665,\u0666\n".encode() + ROW,
        [ROW[:-1].decode()],
    ),  # digits, not ASCII ones
    # a line past the limit is passed over whole, even where its last piece looks like a row
    (HEADER + b"x" * MAX_ROW + ROW + ROW, [ROW[:-1].decode()]),
    (b"", []),
]


@pytest.mark.parametrize(("data", "rows"), CASES, ids=range(len(CASES)))
def test_index_rows_are_six_whole_numbers_and_nothing_else(tmp_path: Path, data, rows):
    path = tmp_path / "sa_000000.csv"
    path.write_bytes(data)
    assert list(index_rows(path)) == rows


@pytest.mark.parametrize("kind", ["missing", "pipe", "link", "folder"])
def test_index_rows_of_what_sa1b_never_writes_are_none(tmp_path: Path, kind: str):
    path = tmp_path / "sa_000000.csv"
    if kind == "pipe":
        os.mkfifo(path)
    elif kind == "link":
        (tmp_path / "real.csv").write_bytes(HEADER + ROW)
        path.symlink_to(tmp_path / "real.csv")
    elif kind == "folder":
        path.mkdir()
    assert list(index_rows(path)) == []  # and a pipe does not block


MARKERS = [  # (marker body, read as sa1b's own)
    ({"shard": "sa_000000.tar", "layout": "shard", "only": None, "images": 3}, True),
    ({"shard": "sa_000000.tar"}, True),  # from before layouts: the shard layout
    ({"layout": "webdataset", "nsamples": 3, "filesize": 10240, "only": "images"}, True),
    ({"layout": "a-future-layout"}, True),  # said as unknown, never overwritten
    ({"layout": "webdataset", "nsamples": 3}, False),
    ({"layout": "webdataset", "nsamples": True, "filesize": 1}, False),
    ({"layout": "webdataset", "nsamples": 3.0, "filesize": 1}, False),
    ({"layout": 7}, True),  # an unknown layout: refused by name (extract/pool.py)
    ({"only": "everything"}, False),
    ({"only": ["images"]}, False),
]


@pytest.mark.parametrize(("body", "kept"), MARKERS, ids=range(len(MARKERS)))
def test_a_marker_is_read_only_when_its_fields_are_what_sa1b_writes(tmp_path, body, kept):
    (tmp_path / ".done").mkdir()
    (tmp_path / ".done" / "sa_000000.json").write_text(json.dumps(body))
    assert (read_marker(tmp_path, "sa_000000.tar") == body) is kept
