"""The README stays honest: short, every command and option it shows exists, its quick
start runs, its cluster lines are the shipped script's, and its state table is complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import typer.main

from sa1b_cli.cli import app
from sa1b_cli.core.results import DownloadStatus
from sa1b_cli.core.status import StateName
from sa1b_cli.extract.shard import ExtractStatus
from sa1b_cli.verify.layers import VerifyStatus
from tests.site import build_site, env

TOP = Path(__file__).resolve().parent.parent
README = (TOP / "README.md").read_text()
MAX_LINES = 200
# Blocks that are not run, each with the reason; every other block runs in the quick start.
NOT_RUN = {
    "pipx install .": "installs into the user's home",
    "#SBATCH --array=0-15": "SLURM lines; the SLURM tests run the whole file",
    "make test": "the suite itself",
    "--salvage": "needs a damaged shard: tests/e2e/test_salvage.py runs it",
}


def blocks() -> list[str]:
    """The shell blocks (``sh``/``bash``); ``text`` blocks show output."""
    return re.findall(r"^```(?:sh|bash)\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


def commands_shown() -> list[list[str]]:
    """Every ``sa1b ...`` in a code block or inline code, as words (comments cut)."""
    found = []
    texts = [line for block in blocks() for line in block.splitlines()]
    texts += re.findall(r"`(sa1b [^`]+)`", README)
    for text in texts:
        text = text.split("#", 1)[0]
        for match in re.finditer(r"\bsa1b ([a-z][^|;&]*)", text):
            found.append(match.group(1).split())
    return found


def test_the_readme_is_short_and_opens_with_install_and_quick_start():
    lines = README.splitlines()
    assert len(lines) <= MAX_LINES
    fences = [line for line in lines if line.startswith("```")]
    assert fences[::2] == [f for f in fences[::2] if f in ("```sh", "```bash", "```text")]
    first_screen = "\n".join(lines[:60])
    assert "## Install" in first_screen and "## Quick start" in first_screen


def test_every_command_and_option_it_shows_exists():
    group = typer.main.get_command(app)  # typer's own (vendored) click group
    shown = commands_shown()
    assert len(shown) > 10
    for words in shown:
        command = group.commands.get(words[0])  # type: ignore[attr-defined]
        assert command is not None, f"sa1b {words[0]} is not a command"
        options = {o for p in command.params for o in p.opts + p.secondary_opts}
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"sa1b {words[0]} has no {word}"


def test_every_option_it_names_belongs_to_some_command():
    group = typer.main.get_command(app)
    commands = [*group.commands.values(), group]  # type: ignore[attr-defined]
    known = {o for c in commands for p in c.params for o in p.opts + p.secondary_opts}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", README))
    assert len(named) > 15
    foreign = {"--array", "--signal", "--strict", "--sort"}  # sbatch's, mypy's and tar's
    assert named - foreign <= known | {"--help"}, f"not sa1b's: {sorted(named - known)}"


def test_selection_and_json_are_where_it_says():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        options = {o for p in command.params for o in p.opts}
        assert "--json" in options, name
        selects = {"--subset", "--shards", "--part"} <= options
        assert selects == (name in ("download", "verify", "extract", "status")), name


def test_the_cluster_lines_are_the_shipped_script_s():
    script = (TOP / "examples" / "sa1b.sbatch").read_text().splitlines()
    (block,) = [b for b in blocks() if "#SBATCH" in b]
    for line in block.splitlines():
        assert line in script, line


def test_the_state_table_names_every_state_of_every_command():
    table = README[README.index("| status | in | meaning |") :]
    table = table[: table.index("\n\n")]
    for kind in (DownloadStatus, VerifyStatus, ExtractStatus, StateName):
        for state in get_args(kind):
            assert f"`{state}`" in table, f"{state} is not in the README's table"


def test_the_figures_name_the_bench_run_they_come_from():
    match = re.search(r"One `make bench` run \(commit `([0-9a-f]{7,})`", README)
    assert match, "the figures say which make bench run they come from"
    performance = (TOP / "docs" / "performance.md").read_text()
    assert match.group(1) in performance


@pytest.mark.slow
def test_the_blocks_run_against_a_local_mirror(tmp_path: Path):
    site = build_site(tmp_path, shards=10, images=2)
    try:
        work = tmp_path / "work"
        work.mkdir()
        bin_dir = str(Path(sys.executable).parent)
        shell_env = {
            **env(),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "SA1B_LINKS": str(site.manifest()),
            "SA1B_ROOT": str(tmp_path / "root"),
        }
        ran = 0
        for block in blocks():
            if any(marker in block for marker in NOT_RUN):
                continue
            for line in block.splitlines():
                command = line.split("  #", 1)[0].strip()
                if not command:
                    continue
                done = subprocess.run(
                    command,
                    shell=True,
                    cwd=work,
                    env=shell_env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                ran += 1
        assert ran >= 6 and (work / "sa_1-masks.png").is_file()
        module = [sys.executable, "-m", "sa1b_cli", "--help"]  # the install block's last line
        assert subprocess.run(module, cwd=work, capture_output=True, check=False).returncode == 0
    finally:
        site.mirror.stop()
