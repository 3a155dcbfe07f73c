from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import make_certificate
from tests.site import Site, build_site


@pytest.fixture
def payload() -> bytes:
    return random.Random(7).randbytes(300_000)


@pytest.fixture(autouse=True)
def _no_user_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("SA1B_", "SLURM_")):
            monkeypatch.delenv(key)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and its key."""
    return make_certificate(tmp_path)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    built = build_site(tmp_path)
    yield built
    built.mirror.stop()


@pytest.fixture
def big_site(tmp_path: Path) -> Iterator[Site]:
    built = build_site(tmp_path, shards=2, images=4, pad=150_000)  # ~600 KB shards
    yield built
    built.mirror.stop()
