from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def payload() -> bytes:
    return random.Random(7).randbytes(300_000)


@pytest.fixture(autouse=True)
def _no_user_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("SA1B_", "SLURM_")):
            monkeypatch.delenv(key)
