"""Request limits a turn passes before anything is saved or sent upstream.

    LIMIT_PROCESS_CONCURRENT   live replies in this process          503 server_busy
    LIMIT_USER_RPM             a user's turns per minute (moving     429 rate_limited
                               window, in LIMITS_STORAGE_URI)
    LIMIT_USER_CONCURRENT      a user's live replies, every process  429 rate_limited
                               (checked with the budgets, in the database: app/billing/budgets.py)

The rate windows use the `limits` library: its moving window gives an exact "N in any 60 s"
rather than a fixed window's burst of 2N at a minute's edge, and the same code runs on its
`redis://` storage, so several processes share one window by changing a setting. With the
default `memory://` each process keeps its own window. Only turns count: reconnecting to a
stream and reading one's own data do not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.errors import ApiError
from app.replies.registry import Runs
from app.settings import Settings

# A full process is usually free again within a reply's length; a retry sooner would only
# find it full again.
BUSY_RETRY_AFTER = 5


def async_storage_uri(uri: str) -> str:
    """The `limits` async storage for a URI as users write it (`memory://`, `redis://…`)."""
    return uri if uri.startswith("async+") else f"async+{uri}"


class RequestLimits:
    def __init__(self, *, settings: Settings, runs: Runs) -> None:
        self._runs = runs
        self._process_max = settings.limit_process_concurrent
        self._admitting = 0  # turns past the process check, not yet live runs
        self._rpm = (
            RateLimitItemPerMinute(settings.limit_user_rpm) if settings.limit_user_rpm else None
        )
        storage = storage_from_string(async_storage_uri(settings.limits_storage_uri))
        assert isinstance(storage, Storage)
        self._limiter = MovingWindowRateLimiter(storage)

    @contextmanager
    def process_slot(self) -> Iterator[None]:
        """Hold one of this process's reply slots while a turn is admitted (its run, once
        started, is counted among the live ones); 503 server_busy when none is free. The
        check and the count are one synchronous step: no await between them."""
        busy = len(self._runs.live) + self._admitting
        if self._process_max is not None and busy >= self._process_max:
            raise ApiError(
                503,
                "server_busy",
                "this server is answering as many messages as it can; try again shortly",
                headers={"Retry-After": str(BUSY_RETRY_AFTER)},
            )
        self._admitting += 1
        try:
            yield
        finally:
            self._admitting -= 1

    async def count_turn(self, user_id: str) -> None:
        """Count one turn of `user_id` against LIMIT_USER_RPM; 429 rate_limited past it."""
        if self._rpm is None:
            return
        if await self._limiter.hit(self._rpm, user_id):
            return
        reset_at, remaining = await self._limiter.get_window_stats(self._rpm, user_id)
        wait = max(1, math.ceil(reset_at - time.time()))
        raise ApiError(
            429,
            "rate_limited",
            f"more than {self._rpm.amount} messages in a minute; try again in {wait} s",
            headers={
                "Retry-After": str(wait),
                "RateLimit-Limit": str(self._rpm.amount),
                "RateLimit-Remaining": str(max(0, remaining)),
                "RateLimit-Reset": str(wait),
            },
            details={"limit": "requests_per_minute"},
        )
