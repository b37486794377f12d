"""Request limits a turn passes before anything is saved or sent upstream, the caller's own
rate first: a turn refused for it never holds one of the process's slots.

    LIMIT_PROCESS_CONCURRENT   live replies in this process          Busy (503 server_busy)
    LIMIT_USER_RPM             a user's turns per minute (moving     RateLimited (429)
                               window, in LIMITS_STORAGE_URI)
    LIMIT_USER_CONCURRENT      a user's live replies, every process  RateLimited (429)
                               (checked with the budgets, in the database: app/billing/budgets.py)

The rate windows use the `limits` library: its moving window gives an exact "N in any 60 s"
rather than a fixed window's burst of 2N at a minute's edge. The same code runs on its Redis
storage (through redis-py, the client REDIS_URL already uses), so several processes share one
window. They live in LIMITS_STORAGE_URI, by default REDIS_URL's Redis when it is set, else
`memory://` (each process its own window). Redis is never a single point of failure: while it
is away, each process counts in a window of its own, and turns are never refused for it. Only
turns count: reconnecting to a stream and reading one's own data do not.

In memory, the window is ours (app/admission/rate_window.py): the same exact window as `limits`'
memory storage, without the expiry task that made a counted turn wait behind a thread hop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from app.admission.rate_window import LocalMovingWindow
from app.core.refusals import Busy, RateLimited
from app.ops.redis import REDIS_FAULTS, client_options
from app.settings import Settings

log = logging.getLogger(__name__)

# A full process is usually free again within a reply's length; a retry sooner would only
# find it full again.
BUSY_RETRY_AFTER = 5


def window_storage(settings: Settings) -> Storage:
    """Where the rate windows live: LIMITS_STORAGE_URI, else REDIS_URL's Redis, else memory.
    A Redis one goes through redis-py with REDIS_URL's options (TLS as Heroku needs it, fast
    failure: see app/ops/redis.py)."""
    uri = settings.limits_storage_uri or settings.redis_url or "memory://"
    uri = uri.removeprefix("async+")
    if uri.startswith("memory://"):
        return LocalMovingWindow()
    options = {}
    if uri.startswith(("redis://", "rediss://")):
        options = {
            "implementation": "redispy",
            "key_prefix": "streamchat-limits",
            **client_options(uri, read_timeout=2.0),
        }
    storage = storage_from_string(f"async+{uri}", **options)
    assert isinstance(storage, Storage)
    return storage


class RequestLimits:
    def __init__(self, *, settings: Settings, live: Callable[[], int]) -> None:
        self._live = live  # how many replies this process generates now
        self._process_max = settings.limit_process_concurrent
        self._admitting = 0  # turns past the process check, not yet live runs
        self._rpm = (
            RateLimitItemPerMinute(settings.limit_user_rpm) if settings.limit_user_rpm else None
        )
        self._limiter = MovingWindowRateLimiter(window_storage(settings))
        self._local = MovingWindowRateLimiter(LocalMovingWindow())  # while the shared one is away
        self._shared_away = False

    @contextmanager
    def process_slot(self) -> Iterator[None]:
        """Hold one of this process's reply slots while a turn is admitted (its run, once
        started, is counted among the live ones); `Busy` when none is free. The
        check and the count are one synchronous step: no await between them."""
        busy = self._live() + self._admitting
        if self._process_max is not None and busy >= self._process_max:
            raise Busy(
                "this server is answering as many messages as it can; try again shortly",
                retry_after=BUSY_RETRY_AFTER,
            )
        self._admitting += 1
        try:
            yield
        finally:
            self._admitting -= 1

    async def count_turn(self, user_id: str, *, per_minute: int | None = None) -> None:
        """Count one turn of `user_id` against LIMIT_USER_RPM (or `per_minute`: a service
        key's own rate, app/jobs/); `RateLimited` past it."""
        rpm = self._rpm if per_minute is None else RateLimitItemPerMinute(per_minute)
        if rpm is None:
            return
        limiter = self._limiter
        try:
            allowed = await limiter.hit(rpm, user_id)
            if self._shared_away:
                log.info("the rate-limit storage is back: windows are shared again")
                self._shared_away = False
        except (*REDIS_FAULTS, StorageError) as exc:
            if not self._shared_away:
                log.warning("the rate-limit storage is unavailable (%s): counting per process", exc)
                self._shared_away = True
            limiter = self._local
            allowed = await limiter.hit(rpm, user_id)
        if allowed:
            return
        reset_at, remaining = await limiter.get_window_stats(rpm, user_id)
        wait = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(
            f"more than {rpm.amount} messages in a minute; try again in {wait} s",
            limit=rpm.amount,
            remaining=max(0, remaining),
            retry_after=wait,
            details={"limit": "requests_per_minute"},
        )
