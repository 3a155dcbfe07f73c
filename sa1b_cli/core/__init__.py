"""The shared vocabulary under every stage: manifest, selection, checksums, store and claims,
errors, progress events, results, config, layouts and markers, content checks, and reading
a shard's gzip/tar stream.

Nothing here imports a stage (download, verify, extract) or the command line.
"""

from __future__ import annotations

__all__: list[str] = []
