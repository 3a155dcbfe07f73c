"""Servers nobody can reach: when a shard gives up on a server that never answered it, the
other shards of that server stop too, instead of each spending a whole retry budget in turn.

Without this a server that is down, or out of reach (a compute node with no route out, a
DNS failure, a firewall), cost each of its shards about two minutes of retries, ``--jobs``
at a time: 1000 shards, eight hours of the same failure. It is down only if nothing said
otherwise since that shard began: no answer to any request, no body still arriving. So an
outage shorter than one shard's budget stops nothing, and an answer later clears it.
(A server here is a host and port, as ``manifest.host_of`` names it.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["HostWatch"]


@dataclass(slots=True)
class _Host:
    answered: float = -math.inf  # when a request to it last got a response
    streaming: int = 0  # bodies it is sending now
    down: str | None = None  # why its shards stop, once one gave up on it


class HostWatch:
    """What the shards of a run have seen of each host (times on the run's monotonic clock)."""

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}

    def _of(self, host: str) -> _Host:
        return self._hosts.setdefault(host, _Host())

    def answered(self, host: str, now: float) -> None:
        """A request to ``host`` got a response (any status): it is up."""
        state = self._of(host)
        state.answered, state.down = now, None

    @contextlib.contextmanager
    def streaming(self, host: str) -> Iterator[None]:
        """A body from ``host`` arrives meanwhile: it is up, whatever new connections meet."""
        state = self._of(host)
        state.streaming += 1
        try:
            yield
        finally:
            state.streaming -= 1

    def gave_up(self, host: str, began: float, why: str) -> None:
        """A shard that began at ``began`` gave up, unable to connect to ``host``: ``why``."""
        state = self._of(host)
        if host and state.answered < began and not state.streaming:
            state.down = why

    def down(self, host: str) -> str | None:
        """Why the shards of ``host`` should not try it (None: let them)."""
        state = self._hosts.get(host)
        return None if state is None or state.streaming else state.down
