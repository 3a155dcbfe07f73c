"""--subset / --shards / --part parsing and shard selection (pure)."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sa1b_cli.core.errors import SlurmEnvError, UsageError
from sa1b_cli.core.manifest import SHARD_COUNT, shard_index, shard_name
from sa1b_cli.core.text import natural

__all__ = ["Part", "Selection", "parse_part", "parse_selection", "part_of", "select"]

_RANGE_RE = re.compile(r"(\d+)\s*-\s*(\d+)")


@dataclass(frozen=True, slots=True)
class Part:
    """Share ``index`` of ``count`` balanced, deterministic parts."""

    index: int
    count: int


@dataclass(frozen=True, slots=True)
class Selection:
    """Which files a command works on; ``None`` names means "every shard"."""

    names: tuple[str, ...] | None
    part: Part | None = None

    def apply(self, available: Iterable[str]) -> list[str]:
        return select(self, available)


def _subset_names(value: str) -> tuple[str, ...]:
    text = value.strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 < share <= 100:
                raise ValueError
            count = math.ceil(SHARD_COUNT * share / 100 - 1e-9)
        else:
            count = int(text)
            if not 0 < count <= SHARD_COUNT:
                raise ValueError
    except ValueError:
        msg = f"--subset {value!r}: use a share such as 1% (0-100%] or a count from 1 to 1000"
        hint = "--subset 1% is shards 0-9; --subset 25 is shards 0-24."
        raise UsageError(msg, hint=hint) from None
    return tuple(shard_name(i) for i in range(count))


def _shards_names(value: str) -> tuple[str, ...]:
    names: list[str] = []
    for token in (t.strip() for t in value.split(",")):
        if not token:
            continue
        if match := _RANGE_RE.fullmatch(token):
            low, high = int(match.group(1)), int(match.group(2))
            if low > high or high >= SHARD_COUNT:
                msg = f"--shards: range {token!r} must be ascending within 0-{SHARD_COUNT - 1}"
                raise UsageError(msg)
            names.extend(shard_name(i) for i in range(low, high + 1))
        elif (number := natural(token)) is not None and number < SHARD_COUNT:
            names.append(shard_name(number))
        elif re.fullmatch(r"sa_\d{6}", token):
            names.append(f"{token}.tar")
        elif re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+", token):
            names.append(token)  # a file name as the manifest spells it
        else:
            msg = f"--shards: cannot read {token!r}"
            hint = (
                "--shards takes shard numbers (0-999), ranges (0-9), shard names "
                "(sa_000031) and manifest file names (sa_images_ids.txt), comma-separated."
            )
            raise UsageError(msg, hint=hint)
    return tuple(dict.fromkeys(names))


def parse_selection(
    subset: str | None, shards: str | None, part: str | None = None, *, env: Mapping[str, str]
) -> Selection:
    """Build a Selection from the command-line values (at most one of subset/shards)."""
    if subset and shards:
        msg = "use --subset or --shards, not both"
        hint = "--subset picks the lowest-numbered shards; --shards names them (0-9,20)."
        raise UsageError(msg, hint=hint)
    names = _subset_names(subset) if subset else _shards_names(shards) if shards else None
    return Selection(names, parse_part(part, env=env) if part else None)


def parse_part(value: str, *, env: Mapping[str, str]) -> Part:
    """``I/N``, ``auto`` (I and N from SLURM_ARRAY_TASK_ID / _MIN / _COUNT) or ``auto/N``.

    ``auto/N`` takes only the task id from SLURM: resubmitting one task of the array
    (``sbatch --array=5``) makes a one-task array, so its count no longer says N.
    """
    if value.strip() == "auto":
        return _slurm_part(env)
    if fixed := re.fullmatch(r"\s*auto\s*/\s*(\d+)\s*", value):
        return _slurm_task_of(env, int(fixed.group(1)))
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        msg = f"--part {value!r}: use I/N with 0 <= I < N (for example 0/4), auto or auto/N"
        hint = "Parts count from 0: the four parts of a job are 0/4, 1/4, 2/4 and 3/4."
        raise UsageError(msg, hint=hint)
    return Part(int(match.group(1)), int(match.group(2)))


def _slurm_part(env: Mapping[str, str]) -> Part:
    keys = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
    missing = [k for k in keys if natural(env.get(k, "").strip()) is None]
    if missing:
        job = env.get("SLURM_JOB_ID")
        where = f"SLURM job {job} is not a job array" if job else "this is not a SLURM job"
        unset = ", ".join(missing)
        msg = f"--part auto needs a SLURM job array: {where} ({unset} not set to a number)"
        hint = (
            "Submit with `sbatch --array=0-15 ...` (srun alone starts no array), "
            "or give the part by hand: --part 3/16."
        )
        raise SlurmEnvError(msg, hint=hint)
    task, low, count = (int(env[k]) for k in keys)
    if not 0 <= task - low < count:
        msg = f"SLURM_ARRAY_TASK_ID={task} is outside MIN={low}, COUNT={count}"
        raise SlurmEnvError(msg, hint="Use a contiguous array such as --array=0-15.")
    return Part(task - low, count)


def _slurm_task_of(env: Mapping[str, str], count: int) -> Part:
    task = env.get("SLURM_ARRAY_TASK_ID", "").strip()
    if natural(task) is None:
        _slurm_part(env)  # raises, explaining what is missing
    if not 0 <= int(task) < count:
        msg = f"--part auto/{count}: SLURM_ARRAY_TASK_ID={task} is not below {count}"
        hint = f"Number the array from 0: --array=0-{count - 1}."
        raise SlurmEnvError(msg, hint=hint)
    return Part(int(task), count)


def part_of(name: str, count: int) -> int:
    """The part a file belongs to: stable whatever else is selected."""
    index = shard_index(name)
    key = index if index is not None else zlib.crc32(name.encode())
    return key % count


def select(selection: Selection, available: Iterable[str]) -> list[str]:
    """The selected names in shard order; names not in ``available`` are kept (reported later)."""
    pool = set(available)
    if selection.names is None:
        chosen = [n for n in pool if shard_index(n) is not None]
    else:
        chosen = list(selection.names)
    if selection.part is not None:
        part = selection.part
        chosen = [n for n in chosen if part_of(n, part.count) == part.index]
    return sorted(dict.fromkeys(chosen), key=lambda n: (shard_index(n) is None, shard_index(n), n))
