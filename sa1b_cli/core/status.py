"""What is on a root, shard by shard, from records, file sizes and claims (no hashing)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from sa1b_cli.core.claims import is_stale, read_claim
from sa1b_cli.core.errors import ManifestError
from sa1b_cli.core.manifest import read_manifest
from sa1b_cli.core.markers import read_marker
from sa1b_cli.core.selection import Selection
from sa1b_cli.core.store import Store

__all__ = ["ShardState", "StateName", "root_status", "selected_status"]

StateName = Literal[
    "missing",
    "partial",
    "complete",
    "failed",
    "expired",
    "failed_verification",
    "active",
    "unrecorded",
]
UNRECORDED = "on disk, not recorded (or its record is damaged): run sa1b verify"


@dataclass(frozen=True, slots=True)
class ShardState:
    name: str
    state: StateName
    bytes_done: int = 0
    size: int | None = None
    detail: str | None = None
    holder: str | None = None  # "host (pid N)" of a live claim
    host: str | None = None  # the host that last wrote the shard's record
    checked: tuple[str, ...] = ()  # digests last checked, "alg=source" (see Record.checked)
    salvaged: dict[str, Any] | None = None  # what extract --salvage kept in <root>/extracted

    @property
    def percent(self) -> float | None:
        return 100.0 * self.bytes_done / self.size if self.size else None


def _sizes(folder: os.PathLike[str]) -> dict[str, int]:
    try:
        return {e.name: e.stat().st_size for e in os.scandir(folder) if e.is_file()}
    except FileNotFoundError:
        return {}


def _final_names(store: Store) -> set[str]:
    return {name for name in _sizes(store.tars) if not name.endswith(".part")}


def _holders(store: Store, stale_after: float) -> dict[str, str]:
    found: dict[str, str] = {}
    if not store.claims.is_dir():
        return found
    now = time.time()
    for entry in os.scandir(store.claims):
        if entry.name.endswith(".claim"):
            holder = read_claim(store.claims / entry.name)
            if holder is not None and not is_stale(holder, now, stale_after):
                found[entry.name.removesuffix(".claim")] = holder.describe()
    return found


def _salvaged(store: Store, name: str) -> dict[str, Any] | None:
    """What ``extract --salvage`` kept of a shard in the default output, if it did."""
    found = (read_marker(store.root / "extracted", name) or {}).get("salvaged")
    return found if isinstance(found, dict) else None


def _salvaged_line(salvaged: dict[str, Any]) -> str:
    images, seen = salvaged.get("images", 0), salvaged.get("seen", 0)
    return f"salvaged: {images:,} of {seen:,} images in <root>/extracted (extract --salvage)"


def selected_status(store: Store, selection: Selection) -> list[ShardState]:
    """The state of the selected shards among those recorded or in the remembered manifest."""
    known = set(store.records()) | _final_names(store)  # a tar whose record is lost counts
    remembered = store.remembered_manifest()
    # Only names the root has not begun: a damaged copy must not hide what the records say
    # (`download` names it when it reads the copy for links).
    with contextlib.suppress(ManifestError):
        known |= set(read_manifest(remembered).rows) if remembered is not None else set()
    return root_status(store, selection.apply(known))


def root_status(store: Store, names: list[str], *, stale_after: float = 120.0) -> list[ShardState]:
    """The state of each name; one scandir per folder, so 1000 shards take milliseconds."""
    records = store.records()
    sizes = _sizes(store.tars)
    holders = _holders(store, stale_after)
    states = []
    for name in names:
        record = records.get(name)
        part = sizes.get(f"{name}.part")
        if part is not None and record is not None and record.spans is not None:
            part = record.kept_bytes()  # parallel ranges: the file's size is not the progress
        final = sizes.get(name)
        expected = record.expected_size if record else None
        holder = holders.get(name)
        if record and record.is_done(final) and record.tar_deleted:
            state = ShardState(name, "complete", 0, record.size, "tar deleted after extraction")
        elif record and record.is_done(final):
            state = ShardState(name, "complete", final or 0, record.size, record.detail)
        elif record and record.status == "bad":
            detail = record.detail
            state = ShardState(name, "failed_verification", final or 0, record.size, detail)
        elif holder is not None:
            state = ShardState(name, "active", part or 0, expected, holder=holder)
        elif record and record.status in ("failed", "expired"):
            state = ShardState(name, record.status, part or 0, expected, record.detail)
        elif final is not None:  # whole-looking, but nothing vouches for it: verify says
            state = ShardState(name, "unrecorded", final, expected, UNRECORDED)
        elif part is not None:
            state = ShardState(name, "partial", part, expected)
        else:
            state = ShardState(name, "missing", 0, expected)
        if record is not None and record.host and state.state != "active":
            state = replace(state, host=record.host)
        if record is not None and state.state == "complete":
            state = replace(state, checked=tuple(record.checked))
        if state.state != "complete" and (salvaged := _salvaged(store, name)) is not None:
            state = replace(state, salvaged=salvaged, detail=_salvaged_line(salvaged))
        states.append(state)
    return states
