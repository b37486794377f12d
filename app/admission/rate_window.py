"""An exact in-memory moving window for `limits`' MovingWindowRateLimiter that never waits.

`limits`' own async memory storage keeps the same window, but every hit schedules its expiry task,
which takes each key's lock and then hops to a thread (`asyncio.to_thread`) to bisect that key's
hits. A turn counted meanwhile waits on the lock for the hop: under the bench's 50 streams of one
user, the stage probe's `admitted` stage took 39 ms p50 (89aae90; `python -m bench --profile
production --stages`). Its sliding window counter has no such wait, but it is approximate: it let a
second turn through at a minute's edge under a limit of 1.

Here each key keeps the times of its hits inside the window, newest first, and a hit trims the
expired ones at the old end before it counts: the same exact "at most N in any window" with
no lock, no task and no await, so counting a turn never lets the event loop run something
else. Keys whose newest hit has left the window are dropped once per window, in one pass.
The counters of the other strategies stay `limits`' own (this is a subclass).
"""

from __future__ import annotations

import time
from collections import deque

from limits.aio.storage import MemoryStorage


class LocalMovingWindow(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self._hits: dict[str, deque[float]] = {}
        self._swept_at = time.time()

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = time.time()
        if now - self._swept_at >= expiry:
            self._sweep(now - expiry)
            self._swept_at = now
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        _trim(hits, now - expiry)
        if len(hits) + amount > limit:
            return False
        hits.extendleft([now] * amount)
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """The oldest hit still in the window (when it leaves, a place frees) and the count."""
        now = time.time()
        hits = self._hits.get(key)
        if not hits:
            return now, 0
        _trim(hits, now - expiry)
        return (hits[-1], len(hits)) if hits else (now, 0)

    async def clear(self, key: str) -> None:
        self._hits.pop(key, None)
        await super().clear(key)

    async def reset(self) -> int | None:
        self._hits.clear()
        return await super().reset()

    def _sweep(self, cutoff: float) -> None:
        """Drop the keys of users with no hit inside the window (their newest is older)."""
        for key in [key for key, hits in self._hits.items() if not hits or hits[0] < cutoff]:
            del self._hits[key]


def _trim(hits: deque[float], cutoff: float) -> None:
    """Drop the hits before `cutoff` (the old end: hits are newest first)."""
    while hits and hits[-1] < cutoff:
        hits.pop()
