"""A live reply's event log: numbered events appended in memory, followed from any event id.

No I/O and no knowledge of the run that writes it: the run appends, followers read. It is the
live `ReplySource` (see `follow`) of the process that generates the reply, and, fed from a Redis
Stream, the local copy other processes follow it by (`redis_log.Mirrors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from app.replies.wire import Event, LogEvent


class Feed(Protocol):
    """Where the log's new events go to other processes (`redis_log.Feed`): named here by
    what the log calls, so the log knows nothing of Redis and imports nothing above it."""

    def queue(self) -> None: ...


class ReplyLog:
    __slots__ = ("_ping_interval", "_waiters", "events", "feed", "finished", "followers", "lost")

    def __init__(self, *, ping_interval: float) -> None:
        self.events: list[LogEvent] = []
        self.finished = False  # the final event is appended: nothing more will come
        # A copy cut off from its source (Redis went away): followers end here without the
        # final event and carry on from the database.
        self.lost = False
        self.followers = 0
        # Where the owner publishes the events to other processes (REDIS_URL), if anywhere.
        self.feed: Feed | None = None
        self._ping_interval = ping_interval
        # Followers and `wait` callers asleep until the log grows: a future each while they
        # wait, rather than a new Event per event appended (an Event's deque is ~0.7 KB:
        # python -m bench --idle 1000, docs/benchmarks.md step 8).
        self._waiters: list[asyncio.Future[None]] = []

    def append(self, event: Event, payload: dict[str, Any]) -> None:
        self.add(LogEvent.make(len(self.events) + 1, event, payload))

    def append_content(self, event: Event, text: str) -> None:
        """Append a `delta` or `reasoning` (`{"content": text}`): the event of every token."""
        self.add(LogEvent.content(len(self.events) + 1, event, text))

    def add(self, event: LogEvent) -> None:
        """Append an event already made (the next id), waking the followers."""
        self.events.append(event)
        if self.feed is not None:
            self.feed.queue()  # sent with the others of this loop pass, not one by one
        if self._waiters:  # none while every follower is still sending the last batch
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def lose(self) -> None:
        """Nothing more will come here, final event or not: followers end where they are."""
        self.lost = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters = []

    def finish(self, event: Event, payload: dict[str, Any]) -> None:
        """Append the final event (`done` or `error`)."""
        self.finished = True
        self.append(event, payload)

    def has_events_after(self, after: int) -> bool:
        """Whether a follower from event `after` has anything to read, now or later."""
        return not self.finished or after < len(self.events)

    def _next_append(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def wait(self) -> None:
        """Until the final event is appended."""
        while not self.finished:
            await self._next_append()

    async def follow(
        self,
        after: int,
        *,
        ready: Callable[[], Awaitable[object]],
        on_followers: Callable[[int], None],
    ) -> AsyncIterator[list[LogEvent]]:
        """Events with id > `after`, live, until the final one: each time, all there are.

        A follower that fell behind (a busy event loop, a slow client) gets what piled up in
        one batch, so one send instead of one per event: the busier the server, the fewer
        sends per reply.

        An empty batch says nothing went out for the ping interval: the response sends a
        keep-alive comment. It comes from a timer handle, not from a task of the response (as
        sse-starlette's pings do): an idle stream's memory is mostly its tasks.

        `ready` is awaited before the first batch; `on_followers` hears the number of
        followers whenever one comes or goes. Given per call, not kept by the log: a log
        holding its run's methods would be a reference cycle, and every finished run would
        wait for the cyclic collector.
        """
        self.followers += 1
        on_followers(self.followers)
        pings = _Pings(self._ping_interval)
        try:
            await ready()
            position = max(0, after)
            while True:
                if position < len(self.events):
                    batch = self.events[position:]
                    position += len(batch)
                    pings.due = False
                    yield batch
                    # A send to a slow client can take a while, and the run goes on meanwhile:
                    # look again before waiting, or before taking the run's end for ours.
                    continue
                if self.finished or self.lost:
                    return
                if pings.due:
                    pings.due = False
                    yield []
                    continue
                pings.waiter = self._next_append()
                await pings.waiter
        finally:
            pings.stop()
            if pings.waiter in self._waiters:
                self._waiters.remove(pings.waiter)  # left while waiting (a client gone)
            self.followers -= 1
            on_followers(self.followers)


class _Pings:
    """When a follower is due a keep-alive ping: a timer that fires every interval and
    wakes the follower if it is waiting.

    An object and a bound method, not a closure over `follow`'s frame: a closure that re-arms
    itself refers to itself, so each finished run waited for the cyclic garbage collector
    (measured: ~300 dead runs held at 50 streams, +8 MB of peak memory: `python -m bench
    --levels 50`'s peak MB, docs/benchmarks.md step 9).
    """

    __slots__ = ("_interval", "_timer", "due", "waiter")

    def __init__(self, interval: float) -> None:
        self.due = False
        self.waiter: asyncio.Future[None] | None = None
        self._interval = interval
        self._timer = asyncio.get_running_loop().call_later(interval, self._fire)

    def _fire(self) -> None:
        self.due = True
        if self.waiter is not None and not self.waiter.done():
            # Left in the log's list of waiters: done ones are skipped, and dropped at its
            # next event.
            self.waiter.set_result(None)
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._fire)

    def stop(self) -> None:
        self._timer.cancel()
