"""The five output layouts, and the one table of where each puts a shard's files."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = ["Layout", "Only", "shard_dirs"]


class Layout(StrEnum):
    SHARD = "shard"
    SPLIT = "split"
    FLAT = "flat"
    IMAGES_MASKS = "images-masks"
    WEBDATASET = "webdataset"

    @property
    def shared(self) -> bool:
        """Every shard's files in the same folders (moved in file by file)."""
        return _SHAPES[self].shared

    @property
    def names_with_shard(self) -> bool:
        """SAM 2's file_list_txt names a file by its shard folder: ``sa_000000/sa_1``."""
        return "{shard}" in _SHAPES[self].jpg and self is not Layout.WEBDATASET


class Only(StrEnum):
    IMAGES = "images"
    ANNOTATIONS = "annotations"


@dataclass(frozen=True, slots=True)
class _Shape:
    jpg: str  # the folder under <out>; "{shard}" is the shard's stem (sa_000000)
    json: str
    shared: bool = False


_SHAPES = {
    Layout.SHARD: _Shape("{shard}", "{shard}"),
    Layout.SPLIT: _Shape("images/{shard}", "annotations/{shard}"),
    Layout.FLAT: _Shape("", "", shared=True),
    Layout.IMAGES_MASKS: _Shape("images", "masks", shared=True),
    Layout.WEBDATASET: _Shape("{shard}", "{shard}"),  # staged like shard, then repacked
}
_KINDS = {Only.IMAGES: "jpg", Only.ANNOTATIONS: "json"}


def shard_dirs(out: Path, name: str, layout: Layout, only: Only | None) -> dict[str, Path]:
    """Where a shard's images and annotations go ("jpg"/"json" -> folder)."""
    shape, stem = _SHAPES[layout], name.removesuffix(".tar")
    dirs = {kind: out / pattern.format(shard=stem) for kind, pattern in _kinds(shape)}
    return {kind: folder for kind, folder in dirs.items() if only is None or kind == _KINDS[only]}


def _kinds(shape: _Shape) -> tuple[tuple[str, str], ...]:
    return (("jpg", shape.jpg), ("json", shape.json))
