"""A link's password is a secret like its signed query: never on screen, in --json or a log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.site import SA1B, env

pytestmark = pytest.mark.slow

LINK = "https://user:pa55word@cdn.example/m1/v/t6/a.tar?_nc_gid&oh=00_SECRETSIG&oe=7FFFFFFF"


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_links_never_shows_a_link_s_userinfo(tmp_path: Path, extra: list[str]):
    links = tmp_path / "links.txt"
    links.write_text(f"file_name\tcdn_link\nsa_000000.tar\t{LINK}\n")
    done = subprocess.run(
        [SA1B, "links", str(links), *extra], capture_output=True, text=True, env=env(), check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "pa55word" not in out and "user:" not in out and "SECRETSIG" not in out, out
    assert "cdn.example" in out
    if extra:
        assert json.loads(done.stdout)["hosts"] == ["cdn.example"]  # the host alone
