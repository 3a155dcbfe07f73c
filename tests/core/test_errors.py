"""The error tree survives the trip between processes with its message and hint."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from sa1b_cli.core.errors import DiskFullError, ManifestError, Sa1bError, UsageError


@pytest.mark.parametrize(
    "error",
    [
        DiskFullError("the disk is full while writing sa_000001.tar.part", hint="Free some space."),
        ManifestError("unsafe file name", path=Path("links.txt"), line=7),
        UsageError("--subset '0%'"),
    ],
)
def test_errors_pickle_with_message_hint_and_exit_code(error: Sa1bError):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert back.message == error.message and back.hint == error.hint
    assert back.exit_code == error.exit_code
    assert str(back) == str(error)
