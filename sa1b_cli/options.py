"""Every command-line option, declared once and grouped into the help panels users read."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from sa1b_cli.core.errors import RootError
from sa1b_cli.core.text import shown

__all__ = [
    "DEFAULT_VERIFY_JOBS",
    "AlgoOpt",
    "ArrivalKnownOpt",
    "ChecksumsOpt",
    "ConnectionsOpt",
    "DecodeOpt",
    "DeepOpt",
    "DeleteTarOpt",
    "ExportOpt",
    "ExtractFlagOpt",
    "ExtractJobsOpt",
    "ImageArg",
    "JobsOpt",
    "JsonOpt",
    "KnownOpt",
    "LayoutOpt",
    "LinksOpt",
    "ManifestArg",
    "NoSplitOpt",
    "OnlyOpt",
    "OutOpt",
    "OutlinesOpt",
    "PartOpt",
    "PngOpt",
    "QuietOpt",
    "RateOpt",
    "RetriesOpt",
    "RootOpt",
    "SalvageOpt",
    "SeedOpt",
    "ShardOpt",
    "ShardsOpt",
    "StatsJsonOpt",
    "SubsetOpt",
    "TimeoutOpt",
    "VerifyJobsOpt",
    "WorkersOpt",
]

DEFAULT_VERIFY_JOBS = max(1, os.cpu_count() or 1)

WHERE = "Where"
SELECTION = "Selection"
NETWORK = "Network"
INTEGRITY = "Integrity"
EXTRACTION = "Extraction"
OUTPUT = "Output"


def check_root(root: Path) -> Path:
    """The --root of any command: a folder that can be read, or one still to create."""
    if root.exists() and not root.is_dir():
        msg = f"the root {shown(str(root))} is a file, not a folder"
        raise RootError(msg, hint="Give --root a folder (it is created when missing).")
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        msg = f"the root {shown(str(root))} cannot be read"
        raise RootError(msg, hint="Fix its permissions or pick another --root.")
    return root


RootOpt = Annotated[
    Path,
    typer.Option(
        "--root",
        envvar="SA1B_ROOT",
        callback=check_root,  # checked once, the same way, for every command
        rich_help_panel=WHERE,
        help="Folder that holds everything sa1b owns (tars, records, extracted).",
    ),
]
LinksOpt = Annotated[
    Path | None,
    typer.Option(
        "--links",
        envvar="SA1B_LINKS",
        show_default=False,
        rich_help_panel=WHERE,
        help="Meta's manifest. Default: links/segment_anything_links.txt, else the root's copy.",
    ),
]
ManifestArg = Annotated[
    Path | None, typer.Argument(help="The manifest to inspect.", show_default=False)
]
SubsetOpt = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=SELECTION,
        help="A share (1% = 10 shards) or a count. Always the lowest-numbered shards.",
    ),
]
ShardsOpt = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=SELECTION,
        help="Explicit shards: 0-9,20,sa_000031 or aux names (sa_images_ids.txt).",
    ),
]
PartOpt = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=SELECTION,
        help=(
            "Take part I/N of the selection. 'auto' reads SLURM_ARRAY_TASK_*; 'auto/N' reads "
            "only the task id, so a resubmitted task keeps its share."
        ),
    ),
]


def _jobs(panel: str, help_text: str, envvar: str | None = None) -> Any:
    """--jobs means shards at once for download and extract, processes for verify --deep."""
    return typer.Option(
        "--jobs", "-j", min=1, max=64, envvar=envvar, rich_help_panel=panel, help=help_text
    )


VerifyJobsOpt = Annotated[
    int, _jobs("Integrity", "Processes for --deep, files hashed at once otherwise.")
]
ExtractJobsOpt = Annotated[int, _jobs("Extraction", "Shards extracted at once (one process each).")]
_JOBS_HELP = "Shards downloaded at once; a split shard's tail lets the next one start."
JobsOpt = Annotated[int, _jobs(NETWORK, _JOBS_HELP, "SA1B_JOBS")]
ConnectionsOpt = Annotated[
    int,
    typer.Option(
        "--connections",
        min=1,
        max=256,
        envvar="SA1B_CONNECTIONS",
        rich_help_panel=NETWORK,
        help=(
            "Ceiling on connections in all. sa1b starts with 16 and adds more while "
            "throughput still rises, fewer when the CPU, not the link, is what limits."
        ),
    ),
]
NoSplitOpt = Annotated[
    bool,
    typer.Option(
        "--no-split",
        rich_help_panel=NETWORK,
        help="One connection per shard: never split a shard into parallel ranges.",
    ),
]
RateOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SA1B_MAX_RATE",
        rich_help_panel=NETWORK,
        help="Cap the total rate, in binary units like every size here: 200M, 200MB and "
        "200MiB all mean 200 MiB/s; 1.5G, 512K.",
    ),
]


def _finite(value: float) -> float:
    """A float option's value: ``nan`` passes any range check, so it is refused here."""
    if not math.isfinite(value):
        msg = f"{value} is not a number of seconds"
        raise typer.BadParameter(msg)
    return value


TimeoutOpt = Annotated[
    float,
    typer.Option(
        min=1.0,
        max=3600.0,
        callback=_finite,
        rich_help_panel=NETWORK,
        help="Drop and resume a connection silent this many seconds, or slower than 1 KiB/s "
        "over as long.",
    ),
]
RetriesOpt = Annotated[
    int,
    typer.Option(
        "--retries",
        min=0,
        max=100,
        envvar="SA1B_RETRIES",
        rich_help_panel=NETWORK,
        help="Attempts a shard may fail in a row before it gives up (renewed by each piece "
        "that lands; a shard also gives up after 2 minutes without progress).",
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        max=64,
        envvar="SA1B_WORKERS",
        rich_help_panel=NETWORK,
        help="Processes, each with its own event loop and a share of the shards.",
    ),
]
ChecksumsOpt = Annotated[
    list[str] | None,
    typer.Option(
        rich_help_panel=INTEGRITY,
        help="\\[alg:]FILE in md5sum, sha256sum, xxhsum or BSD-tag format. Repeatable.",
    ),
]
KnownOpt = Annotated[
    bool | None,
    typer.Option(
        "--known/--no-known",
        rich_help_panel=INTEGRITY,
        show_default=False,
        help=(
            "Check md5s against the community list: checklist.txt of "
            "XuyangShen/SA-1B-Fast-Downloader at a pinned commit, made from Meta's files "
            "(fetched once, checked by sha256, cached in the root). Default: on once cached."
        ),
    ),
]
ArrivalKnownOpt = Annotated[
    bool,
    typer.Option(
        "--known",
        rich_help_panel=INTEGRITY,
        help=(
            "Also check each shard's md5 on arrival against the community list "
            "(+1.3 CPU s/GiB; verify checks it later otherwise)."
        ),
    ),
]
DeepOpt = Annotated[
    bool,
    typer.Option(
        "--deep",
        rich_help_panel=INTEGRITY,
        help="Also check the content: gzip, tar, JSON, RLE masks, JPEG sizes (every core).",
    ),
]
DecodeOpt = Annotated[
    bool,
    typer.Option(
        "--decode-masks",
        rich_help_panel=INTEGRITY,
        help="With --deep, fully decode every mask (exact h x w check; about 2 ms a mask).",
    ),
]
ExportOpt = Annotated[
    Path | None,
    typer.Option(
        "--export",
        rich_help_panel=INTEGRITY,
        help="Write a checksum list of the shards that passed, in the format of the --algo tool.",
    ),
]
AlgoOpt = Annotated[
    str,
    typer.Option("--algo", rich_help_panel=INTEGRITY, help="For --export: md5, sha256, xxh128."),
]
ExtractFlagOpt = Annotated[
    bool,
    typer.Option(
        "--extract",
        rich_help_panel=EXTRACTION,
        help="Extract each shard as soon as it is downloaded and checked.",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        envvar="SA1B_OUT",
        show_default=False,
        rich_help_panel=EXTRACTION,
        help="Where to extract (default: <root>/extracted).",
    ),
]
LayoutOpt = Annotated[
    str,
    typer.Option(
        "--layout",
        rich_help_panel=EXTRACTION,
        help="shard: <out>/sa_000000/sa_1.jpg + .json (SAM 2 with <out>/file_list.txt). "
        "split: <out>/images/sa_000000/, <out>/annotations/sa_000000/. "
        "images-masks: <out>/images/sa_1.jpg, <out>/masks/sa_1.json + sa_images_ids.txt. "
        "flat: <out>/sa_1.jpg (subsets). "
        "webdataset: <out>/sa_000000.tar sorted, uncompressed + wids-index.json.",
    ),
]
OnlyOpt = Annotated[
    str | None,
    typer.Option("--only", rich_help_panel=EXTRACTION, help="Extract only images or annotations."),
]
SalvageOpt = Annotated[
    bool,
    typer.Option(
        "--salvage",
        rich_help_panel=EXTRACTION,
        help="A shard that fails its checks: write every image proven whole (it decodes, its "
        "annotation parses and its masks fit) and say which were lost. Exit code 1.",
    ),
]
DeleteTarOpt = Annotated[
    bool,
    typer.Option(
        "--delete-tar",
        rich_help_panel=EXTRACTION,
        help="Delete each tar once its extraction is complete (it is never fetched again).",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", rich_help_panel=OUTPUT, help="Print one machine-readable report."),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", rich_help_panel=OUTPUT, help="No progress display.")
]
ImageArg = Annotated[str, typer.Argument(help="Image id: 1, sa_1 or sa_1.jpg.", show_default=False)]
ShardOpt = Annotated[
    str | None,
    typer.Option(help="Its shard (0 or sa_000000): read from the tar if not extracted."),
]
PngOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="The PNG to write (default: ./sa_<id>-masks.png)."),
]
OutlinesOpt = Annotated[bool, typer.Option("--outlines", help="Draw each mask's edge.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the mask colours.")]
StatsJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the masks' statistics instead of drawing.")
]
