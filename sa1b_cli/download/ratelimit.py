"""A token bucket shared by every transfer of a run (--max-rate)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Caps the total byte rate; ``rate=None`` means unlimited."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next_free = clock() - 1.0  # start with a full one-second bucket

    async def acquire(self, nbytes: int) -> None:
        if not self.rate:
            return
        now = self._clock()
        # Each chunk books the time its bytes take at the cap; a burst of one second is allowed.
        start = max(self._next_free, now - 1.0)
        self._next_free = start + nbytes / self.rate
        if self._next_free > now:
            await self._sleep(self._next_free - now)
