"""An annotation is bounded before it is parsed: the count of values, then JSON and schema."""

from __future__ import annotations

import json

import pytest

from sa1b_cli.core import annotation
from sa1b_cli.core.annotation import BadAnnotation, load_annotation

DOC = {
    "image": {"image_id": 1, "width": 4, "height": 2, "file_name": "sa_1.jpg"},
    "annotations": [{"bbox": [0, 0, 1, 1], "segmentation": {"size": [2, 4], "counts": "0:8"}}],
}


def test_a_document_within_the_bound_of_values_is_parsed(monkeypatch):
    monkeypatch.setattr(annotation, "COUNTED_FROM", 0)  # counted however small
    data = json.dumps(DOC).encode()
    values = data.count(b",") + data.count(b"[") + data.count(b"{")
    monkeypatch.setattr(annotation, "MAX_VALUES", values)
    assert load_annotation(data) == DOC


@pytest.mark.parametrize("filler", [b"[],", b"{},", b'"ab",', b"0.5,"])
def test_past_the_bound_of_values_nothing_is_parsed(monkeypatch, filler):
    """Each filler is a few bytes that parse into an object many times its size."""
    monkeypatch.setattr(annotation, "MAX_VALUES", 1000)
    monkeypatch.setattr(annotation, "COUNTED_FROM", 0)
    data = b'{"image": {}, "annotations": [' + filler * 1000 + b"[]]}"
    monkeypatch.setattr(json, "loads", lambda _: pytest.fail("parsed"))
    with pytest.raises(BadAnnotation, match="holds more than 1,000 JSON values"):
        load_annotation(data)


def test_a_small_document_is_not_counted(monkeypatch):
    """Under COUNTED_FROM bytes the parse itself stays small: no pass over the bytes first."""
    monkeypatch.setattr(annotation, "MAX_VALUES", 10)
    assert load_annotation(json.dumps(DOC).encode()) == DOC  # 20-odd values, yet parsed
