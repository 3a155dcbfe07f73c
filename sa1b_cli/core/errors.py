"""The one exception tree of sa1b; every error carries a hint for the user.

Exceptions are for the run; per-shard outcomes are data (see ``results``).

* Sa1bError                      exit code 1 unless noted
  x UsageError                   bad option values (exit 2)
  x ManifestError                unreadable manifest, bad header or row (exit 2)
  x ChecksumFileError            unreadable or malformed --checksums file (exit 2)
  x KnownListError               the community md5 list cannot be fetched or fails its hash
  x NotEnoughSpaceError          the bytes to fetch do not fit on the disk
  x DiskFullError                ENOSPC while writing; partial files are kept
  x RootError                    the root cannot be created, read or written
  x SlurmEnvError                --part auto outside a SLURM job array (exit 2)
  x ImageNotFoundError           sa1b show: the image is in no extracted shard or tar read
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ChecksumFileError",
    "DiskFullError",
    "ImageNotFoundError",
    "KnownListError",
    "ManifestError",
    "NotEnoughSpaceError",
    "RootError",
    "Sa1bError",
    "SlurmEnvError",
    "UsageError",
]


class Sa1bError(Exception):
    """Base of every error sa1b reports to a user."""

    exit_code = 1
    default_hint: str | None = None  # what to do next, when the raise site has nothing better

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (--workers, extraction pools) with their hint.
        return (_restore, (type(self), self.message, self.hint))


def _restore(kind: type[Sa1bError], message: str, hint: str | None) -> Sa1bError:
    error = Exception.__new__(kind)
    Sa1bError.__init__(error, message, hint=hint)
    return error


class UsageError(Sa1bError):
    """An option value that cannot be used."""

    exit_code = 2
    default_hint = "Every command explains its options with --help (sa1b download --help)."


class ManifestError(Sa1bError):
    """The manifest cannot be read or has a row that must not be used."""

    exit_code = 2
    path: Path | None = None
    line: int | None = None

    def __init__(self, message: str, *, path: Path | None = None, line: int | None = None) -> None:
        where = f"{path}" if path else "manifest"
        if line is not None:
            where += f", line {line}"
        super().__init__(
            f"{where}: {message}",
            hint="Download a fresh manifest from Meta's SA-1B page (see links/README.md).",
        )
        self.path = path
        self.line = line


class ChecksumFileError(Sa1bError):
    """A --checksums file that cannot be read or parsed."""

    exit_code = 2
    default_hint = (
        "Pass a readable list in md5sum, sha256sum, xxhsum or BSD-tag format "
        "(prefix it with md5: or xxh128: when its name does not say which)."
    )


class KnownListError(Sa1bError):
    """The community md5 list cannot be fetched, or is not the pinned file."""

    default_hint = "Run again with network access, or pass your own list with --checksums."


class NotEnoughSpaceError(Sa1bError):
    """The selected shards cannot fit on the target disk."""


class DiskFullError(Sa1bError):
    """The disk filled up in the middle of a run."""


class RootError(Sa1bError):
    """The root directory cannot be used (bad input: the same exit code as bad usage)."""

    exit_code = 2


class SlurmEnvError(Sa1bError):
    """--part auto was asked for outside a SLURM job array."""

    exit_code = 2


class ImageNotFoundError(Sa1bError):
    """sa1b show found the image in no extracted shard and no tar it read."""
