"""Synthetic SA-1B shards and a CDN-like mirror on loopback, for the demo, tests and benchmarks."""

from __future__ import annotations

__all__: list[str] = []
