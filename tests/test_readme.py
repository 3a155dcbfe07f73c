"""The README shows the shipped SLURM script word for word (the SLURM tests run the file)."""

from __future__ import annotations

from pathlib import Path

TOP = Path(__file__).resolve().parent.parent


def test_readme_cluster_script_is_the_shipped_file():
    readme = (TOP / "README.md").read_text()
    start = readme.index("<!-- begin examples/sa1b.sbatch -->\n```bash\n")
    start = readme.index("```bash\n", start) + len("```bash\n")
    end = readme.index("```\n<!-- end examples/sa1b.sbatch -->", start)
    assert readme[start:end] == (TOP / "examples" / "sa1b.sbatch").read_text()
