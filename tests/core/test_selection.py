"""Selection rules: --subset, --shards and --part."""

from __future__ import annotations

import pytest

from sa1b_cli.core.errors import SlurmEnvError, UsageError
from sa1b_cli.core.selection import Part, parse_part, parse_selection, select

ALL = [f"sa_{i:06d}.tar" for i in range(1000)] + ["sa_images_ids.txt"]


def names(subset=None, shards=None, part=None, env=None):
    return select(parse_selection(subset, shards, part, env=env or {}), ALL)


def test_percent_rounds_up_and_takes_the_lowest_shards():
    assert names("1%") == [f"sa_{i:06d}.tar" for i in range(10)]
    assert len(names("0.15%")) == 2
    assert names("100%") == ALL[:1000]


def test_smaller_subsets_are_contained_in_larger_ones():
    assert set(names("25")) <= set(names("2.5%")) <= set(names("40"))


def test_shards_ranges_numbers_and_names():
    got = names(shards="0-2, 20,sa_000031,sa_images_ids.txt")
    assert got == [
        "sa_000000.tar",
        "sa_000001.tar",
        "sa_000002.tar",
        "sa_000020.tar",
        "sa_000031.tar",
        "sa_images_ids.txt",
    ]


def test_default_is_every_shard_but_not_aux_rows():
    assert names() == ALL[:1000]


@pytest.mark.parametrize(
    ("subset", "shards"),
    [
        ("0%", None),
        ("101%", None),
        ("1001", None),
        ("x", None),
        (None, "5-2"),
        (None, "0-1000"),
        (None, "../x"),
        (None, "abc"),
        (None, "sa_1"),
        (None, "1000"),
        (None, "\u00b2"),  # isdigit() holds for a superscript two; int() refuses it
        (None, "\u0663"),  # an Arabic-Indic three: int() takes it, a shard number it is not
        ("1%", "1"),
    ],
)
def test_bad_values_are_usage_errors(subset, shards):
    with pytest.raises(UsageError):
        parse_selection(subset, shards, env={})


def test_parts_are_disjoint_balanced_and_stable():
    parts = [names("1%", part=f"{i}/3") for i in range(3)]
    assert sorted(n for p in parts for n in p) == names("1%")
    assert [len(p) for p in parts] == [4, 3, 3]
    assert "sa_000003.tar" in parts[0] and "sa_000003.tar" in names("2%", part="0/3")


def test_part_auto_reads_slurm_and_explains_when_missing():
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert parse_part("auto", env=env) == Part(3, 8)
    with pytest.raises(SlurmEnvError, match="SLURM_ARRAY_TASK_ID"):
        parse_part("auto", env={})
    with pytest.raises(SlurmEnvError, match="SLURM_ARRAY_TASK_ID"):
        parse_part("auto", env=env | {"SLURM_ARRAY_TASK_ID": "\u00b2"})
    with pytest.raises(SlurmEnvError, match="SLURM_ARRAY_TASK_ID"):
        parse_part("auto/4", env={"SLURM_ARRAY_TASK_ID": "\u00b2"})
    with pytest.raises(UsageError):
        parse_part("3/3", env={})


def test_part_auto_n_survives_a_resubmitted_task():
    # `sbatch --array=5` alone: SLURM says MIN=5, COUNT=1, which would make it part 0/1.
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "1"}
    assert parse_part("auto", env=env) == Part(0, 1)
    assert parse_part("auto/16", env=env) == Part(5, 16)
    with pytest.raises(SlurmEnvError, match="not below 4"):
        parse_part("auto/4", env=env)
    with pytest.raises(SlurmEnvError, match="not a job array"):
        parse_part("auto/4", env={"SLURM_JOB_ID": "77"})
    with pytest.raises(SlurmEnvError, match="not a SLURM job"):
        parse_part("auto/4", env={})
