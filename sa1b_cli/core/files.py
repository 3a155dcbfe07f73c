"""Files a user names (a manifest, a checksum list), read whole but never past a bound:
``--links /dev/zero`` or a wrong multi-GiB file must fail with its name, not fill memory."""

from __future__ import annotations

import errno
from pathlib import Path

from sa1b_cli.core.text import format_size

__all__ = ["read_at_most"]


def read_at_most(path: Path, limit: int) -> bytes:
    """The file's bytes; an ``OSError`` (``EFBIG``, its strerror in words) past ``limit``."""
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {format_size(limit)}, so not this kind of file")
    return data
