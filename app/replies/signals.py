"""Stop requests and agent changes, from the process that received them to every other.

Each travels two ways: through the database, which always works (a stop request is a column
the owner's heartbeat reads, `Recovery`; overrides are re-read every heartbeat interval), and,
with REDIS_URL, as a pub/sub message that arrives at once. Pub/sub is fire-and-forget, so it
only ever says "look now": a process that misses one (Redis away, a reconnect) still gets the
change through the database, and re-reads the overrides whenever it subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis

from app.agents.overrides import Agents
from app.core.outage import Outage
from app.ops.redis import REDIS_FAULTS, connect_redis
from app.replies.follow import find_reply
from app.replies.redis_log import ReplyStreams
from app.replies.registry import Runs
from app.settings import Settings
from app.storage.store import Store

log = logging.getLogger(__name__)

CHANNEL = b"streamchat:signals"
STOP = b"stop "  # + the message id
AGENTS = b"agents"


class Signals:
    def __init__(
        self,
        *,
        store: Store,
        runs: Runs,
        agents: Agents,
        settings: Settings,
        streams: ReplyStreams | None,
    ) -> None:
        self._store = store
        self._runs = runs
        self._agents = agents
        self._settings = settings
        self._streams = streams
        self._redis: Redis | None = streams.redis if streams is not None else None
        self._tasks: set[asyncio.Task[Any]] = set()  # database reads: never cut off mid-query
        self._stopping = asyncio.Event()
        self._listening: asyncio.Task[None] | None = None
        self._outage = Outage("re-reading the agent overrides")

    def start(self) -> None:
        self._spawn(self._refresh_agents_forever(), name="refresh-agents")
        if self._settings.redis_url is not None:
            self._listening = asyncio.create_task(
                self._listen_forever(self._settings.redis_url), name="redis-signals"
            )

    def _spawn(self, coroutine: Any, *, name: str | None = None) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop listening; the database reads under way finish (a query cut off by a
        cancellation would answer into a closed event loop)."""
        self._stopping.set()
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- sending ----------------------------------------------------------------------------------

    async def stop_elsewhere(self, message_id: str, *, user_id: str) -> str:
        """Stop the user's reply another process generates (the caller has checked it is
        theirs); its status once it has ended (`streaming` if it has not within
        STALE_REPLY_AFTER: its process is gone, and the sweep will mark it interrupted)."""
        await self._store.replies.request_stop(message_id=message_id)
        await self._publish(STOP + message_id.encode())
        source = await find_reply(
            message_id,
            user_id=user_id,
            runs=self._runs,
            store=self._store,
            settings=self._settings,
            streams=self._streams,
            owner_checked=True,
        )
        if source is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.stale_reply_after):
                    async for _ in source.follow(0):
                        pass
        row = await self._store.replies.get(message_id=message_id, user_id=user_id)
        return row["status"] if row else "streaming"

    async def agents_changed(self) -> None:
        """Tell the other processes to re-read the overrides now, not at their next beat."""
        await self._publish(AGENTS)

    async def _publish(self, message: bytes) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.publish(CHANNEL, message)
        except REDIS_FAULTS as exc:  # the database carries it anyway, within a heartbeat
            log.warning("could not publish a signal on Redis (%s)", exc)

    # -- receiving --------------------------------------------------------------------------------

    async def _refresh_agents_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.heartbeat_interval)
                return
            # A task a read: see `tend` (app/core/outage.py): a connection cut by an outage
            # stays broken for the task that held it.
            await asyncio.create_task(self._refresh_agents())

    async def _refresh_agents(self) -> None:
        try:
            await self._agents.refresh(self._store)
        except Exception as exc:  # a database hiccup must not end the refreshing
            if not self._outage.failed(exc):
                log.exception("re-reading the agent overrides failed")
        else:
            self._outage.ok()

    async def _listen_forever(self, url: str) -> None:
        # Its own client: a subscribed connection waits for messages without a read timeout.
        redis = connect_redis(url, read_timeout=None)
        healthy = True
        try:
            while True:
                pubsub = redis.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(CHANNEL)
                    if not healthy:
                        log.info("Redis is back: signals arrive through it again")
                        # Changes made while unsubscribed were never heard: read them now.
                        await self._refresh_agents()
                    healthy = True
                    async for message in pubsub.listen():
                        self._on(message["data"])
                except REDIS_FAULTS as exc:
                    if healthy:
                        log.warning("Redis unavailable (%s): signals go through the database", exc)
                    healthy = False
                    await asyncio.sleep(1.0)
                finally:
                    with contextlib.suppress(*REDIS_FAULTS):
                        await pubsub.aclose()
        finally:
            await redis.aclose()

    def _on(self, data: bytes) -> None:
        if data.startswith(STOP):
            self._runs.stop([data[len(STOP) :].decode()])
        elif data == AGENTS:
            self._spawn(self._refresh_agents())
