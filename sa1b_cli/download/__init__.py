"""Stage 1, download: fetch the selected shards from the CDN with resume, retries and
streaming digests, into ``<root>/tars/`` (a final name only ever holds whole, checked bytes).
"""

from __future__ import annotations

from sa1b_cli.download.engine import DownloadReport, check_run_space, run_downloads

__all__ = ["DownloadReport", "check_run_space", "run_downloads"]
