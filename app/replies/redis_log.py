"""Live replies through Redis Streams (REDIS_URL): every process serves every reply live.

    Outbox    the owner's side: each live reply's new events go to its stream, a pipeline per
              event-loop pass (never a round trip per token), with the owner's event ids
              (`wire.entry_id`, `wire.to_entry`), trimmed to REDIS_STREAM_MAXLEN, expiring
              REDIS_STREAM_TTL seconds after the final event (STALE_REPLY_AFTER while live
              and silent: a dead owner's stream goes away on its own)
    Mirrors   the followers' side: one blocking reader per process (`XREAD BLOCK` over every
              stream its local followers follow) keeps a local copy of each reply, a
              `ReplyLog` its followers read as they read the owner's; no Redis connection
              per follower
    RedisReply  the `ReplySource` over a copy (picked in `follow.find_reply`)

Redis carries only copies: the database stays the truth. A copy is read from the first entry,
so a follower that arrives as the reply ends still finds the final event in the stream. If
Redis goes away (or a stream does, or has a gap), the owner carries on without it and the
copies are `lost`: their followers go on from the database, from the event they reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio import Redis

from app.ops.redis import REDIS_FAULTS, connect_redis
from app.replies.log import ReplyLog
from app.replies.replay import StoredReply
from app.replies.wire import FINAL_EVENTS, LogEvent, entry_id, from_entry, to_entry
from app.settings import Settings

log = logging.getLogger(__name__)

BROKEN = -1  # a feed's `sent` once publishing failed: it publishes nothing more
RETRY_AFTER = 1.0  # seconds between the reader's tries while Redis is away
STOP_GRACE = RETRY_AFTER + 1.0  # past its BLOCK time, what a stopping reader is given


def stream_key(message_id: str) -> bytes:
    return f"streamchat:reply:{message_id}".encode()


class Feed:
    """One reply's way to its stream: the events list it shares with the run's log, and how
    many of them are sent. Refers to the log's list, not the log: no reference cycle."""

    __slots__ = ("_outbox", "events", "key", "queued", "sent")

    def __init__(self, outbox: Outbox, key: bytes, events: list[LogEvent]) -> None:
        self._outbox = outbox
        self.key = key
        self.events = events
        self.sent = 0
        self.queued = False

    def queue(self) -> None:
        """The hot path, per token: a flag; the first of a loop pass also queues the feed."""
        if not self.queued:
            self.queued = True
            self._outbox.queue(self)


class Outbox:
    def __init__(self, redis: Redis, *, maxlen: int, live_ttl: float, ended_ttl: float) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._live_ms = int(live_ttl * 1000)
        self._ended_ms = int(ended_ttl * 1000)
        self._loop = asyncio.get_running_loop()
        self._queued: list[Feed] = []
        self._scheduled = False
        self._flushing: asyncio.Task[None] | None = None
        self._open: set[Feed] = set()  # published, final event not yet: kept from expiring
        self._keeping: asyncio.Task[None] | None = None
        self._healthy = True

    def feed(self, message_id: str, events: list[LogEvent]) -> Feed:
        return Feed(self, stream_key(message_id), events)

    def queue(self, feed: Feed) -> None:
        self._queued.append(feed)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        # One flush at a time: entries must reach a stream in id order, and pipelines on two
        # pooled connections could overtake each other. What is queued meanwhile goes in the
        # next pipeline, so a slow Redis means bigger batches, not more round trips.
        if self._flushing is None or self._flushing.done():
            self._flushing = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        while self._queued:
            feeds, self._queued = self._queued, []
            pipe = self._redis.pipeline(transaction=False)
            batch: list[Feed] = []
            for feed in feeds:
                feed.queued = False
                events = feed.events[feed.sent :]
                if not events:
                    continue
                for event in events:
                    pipe.xadd(
                        feed.key,
                        to_entry(event),
                        id=entry_id(event.id),
                        maxlen=self._maxlen,
                        approximate=True,
                    )
                ended = events[-1].event in FINAL_EVENTS
                if ended or feed.sent == 0:
                    # In between, `_keep_alive` renews the live TTL: one command per event
                    # less. (At 1 stream, where every event is a pipeline of its own, Redis
                    # costs ~+46% CPU per reply with or without it: python -m bench
                    # --processes 2 --redis --levels 1.)
                    pipe.pexpire(feed.key, self._ended_ms if ended else self._live_ms)
                feed.sent += len(events)
                batch.append(feed)
                if ended:
                    self._open.discard(feed)
                else:
                    self._open.add(feed)
            if not batch:
                continue
            try:
                await pipe.execute()
            except REDIS_FAULTS as exc:
                await self._give_up(batch, exc)
            else:
                if not self._healthy:
                    log.info("Redis is back: live replies are published again")
                self._healthy = True

    async def _give_up(self, feeds: list[Feed], exc: BaseException) -> None:
        """These replies go on without Redis: a stream with a gap must not be followed, so
        they publish nothing more and their streams are deleted (or, if Redis is down, expire
        with their live TTL); followers elsewhere go on from the database."""
        if self._healthy:
            log.warning("Redis unavailable (%s): live replies go on without it", exc)
        self._healthy = False
        for feed in feeds:
            feed.sent, feed.queued = BROKEN, True  # `queued` kept: `queue` never sends it again
            self._open.discard(feed)
        with contextlib.suppress(*REDIS_FAULTS):
            await self._redis.delete(*(feed.key for feed in feeds))

    def start(self) -> None:
        self._keeping = asyncio.create_task(self._keep_alive(), name="redis-keep-alive")

    async def _keep_alive(self) -> None:
        """Renew the live TTL of replies whose upstream is silent for a while (a model
        thinking): only the streams of dead owners should expire."""
        while True:
            await asyncio.sleep(self._live_ms / 3000)
            keys = [feed.key for feed in self._open]
            if not keys:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.pexpire(key, self._live_ms)
            with contextlib.suppress(*REDIS_FAULTS):
                await pipe.execute()

    async def flushed(self) -> None:
        """Until what is queued now is sent (or given up), by the one flush task."""
        while self._queued or (self._flushing is not None and not self._flushing.done()):
            if self._flushing is None or self._flushing.done():
                self._flushing = self._loop.create_task(self._flush())
            await self._flushing

    async def close(self) -> None:
        """Send what is queued (the final events of a shutdown's drain) and stop."""
        if self._keeping is not None:
            self._keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeping
        await self.flushed()


class Mirrors:
    """Local copies of other processes' live replies, all fed by one blocking reader."""

    def __init__(
        self, redis: Redis, reader: Redis, *, ping_interval: float, check_interval: float
    ) -> None:
        self._redis = redis  # short commands
        self._reader = reader  # the blocking XREAD's own client: one connection, held
        self._ping_interval = ping_interval
        self._check_interval = check_interval
        self._copies: dict[bytes, ReplyLog] = {}  # live ones only: a finished copy needs no reader
        # A stream of this process's own that wakes the blocking XREAD when a copy is added.
        self._wake_key = f"streamchat:wake:{uuid.uuid4().hex}".encode()
        self._reading: asyncio.Task[None] | None = None
        self._closing = False

    async def open(self, message_id: str) -> ReplyLog | None:
        """A copy of the reply's stream, following it; None if Redis has no whole stream of
        it (none, trimmed, expired) or is away: the database serves it then."""
        key = stream_key(message_id)
        copy = self._copies.get(key)
        if copy is not None:
            return copy
        try:
            entries = await self._redis.xrange(key)
        except REDIS_FAULTS:
            return None
        copy = self._copies.get(key)  # another follower's `open` won the race
        if copy is not None:
            return copy
        copy = ReplyLog(ping_interval=self._ping_interval)
        if not entries or not _extend(copy, entries):
            return None
        if not copy.finished:
            self._copies[key] = copy
            # The blocking XREAD started before this stream was among its keys.
            await self._wake()
        return copy

    async def _wake(self) -> None:
        """End the blocking XREAD's wait now: an entry in this process's wake stream."""
        with contextlib.suppress(*REDIS_FAULTS):
            await self._redis.xadd(self._wake_key, {b"w": b""}, maxlen=1)
            await self._redis.pexpire(self._wake_key, int(self._check_interval * 3000))

    def start(self) -> None:
        self._reading = asyncio.create_task(self._read_forever(), name="redis-reader")
        self._reading.add_done_callback(_reader_ended)

    async def close(self) -> None:
        """Stop the reader between two reads, not inside one: a task cancelled in redis-py's
        blocking XREAD can go on waiting on its socket for ever, the cancel swallowed (seen
        here at load 20 with a 10 ms BLOCK: tests/replies/test_follow.py hung in `close`; the
        same family as redis-py #2028 and #2579). Woken, the XREAD returns at once and the
        loop ends; only a reader still stuck after its BLOCK time and a grace is cancelled."""
        if self._reading is not None:
            self._closing = True
            await self._wake()
            grace = self._check_interval + STOP_GRACE
            if not (await asyncio.wait({self._reading}, timeout=grace))[0]:
                self._reading.cancel()
                await asyncio.wait({self._reading}, timeout=STOP_GRACE)
        for copy in self._copies.values():
            copy.lose()
        self._copies.clear()

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        woken_at: bytes | str = "0-0"
        checked_at, sizes = loop.time(), dict[bytes, int]()
        healthy = True
        while not self._closing:
            streams: dict[bytes, bytes | str] = {
                key: entry_id(len(copy.events)) for key, copy in self._copies.items()
            }
            streams[self._wake_key] = woken_at
            try:
                answer = await self._reader.xread(
                    streams,  # type: ignore[arg-type]
                    block=int(self._check_interval * 1000),
                )
                if loop.time() - checked_at >= self._check_interval:
                    sizes = await self._check(sizes)
                    checked_at = loop.time()
            except REDIS_FAULTS as exc:
                if healthy:
                    log.warning("Redis unavailable (%s): following replies from the database", exc)
                healthy = False
                for key in list(self._copies):
                    self._lose(key)
                await asyncio.sleep(RETRY_AFTER)
                continue
            if not healthy:
                log.info("Redis is back: following live replies through it again")
            healthy = True
            for key, entries in answer or []:
                if key == self._wake_key:
                    woken_at = entries[-1][0]
                    continue
                copy = self._copies.get(key)
                if copy is None:
                    continue
                if not _extend(copy, entries):
                    self._lose(key)
                elif copy.finished:
                    del self._copies[key]

    async def _check(self, sizes: dict[bytes, int]) -> dict[bytes, int]:
        """Copies that stood still since the last check whose stream is gone (its owner died,
        or gave Redis up) are lost; their followers go on from the database."""
        still = [key for key, copy in self._copies.items() if sizes.get(key) == len(copy.events)]
        if still:
            pipe = self._redis.pipeline(transaction=False)
            for key in still:
                pipe.exists(key)
            for key, exists in zip(still, await pipe.execute(), strict=True):
                if not exists:
                    self._lose(key)
        return {key: len(copy.events) for key, copy in self._copies.items()}

    def _lose(self, key: bytes) -> None:
        copy = self._copies.pop(key, None)
        if copy is not None:
            copy.lose()


def _reader_ended(task: asyncio.Task[None]) -> None:
    """A reader that ended on an error of its own (not Redis's: those it waits out) says so."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the Redis reader stopped: copies of live replies no longer grow", exc_info=exc)


def _extend(copy: ReplyLog, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> bool:
    """Add stream entries to a copy; False at a gap (a trimmed stream, a publisher that gave
    up and began again) or an entry that is not an event of ours (`wire.from_entry`): a copy
    with a hole must not be followed."""
    for entry, fields in entries:
        try:
            event = from_entry(entry, fields)
        except ValueError:
            return False
        if event.id != len(copy.events) + 1:
            return False
        if event.event in FINAL_EVENTS:
            copy.finished = True
        copy.add(event)
    return True


async def _ready() -> None:
    """A copy's events exist already: nothing to wait for before the first batch."""


def _no_count(count: int) -> None:
    """Copies end with their reply, followed or not: nobody counts their followers."""


class RedisReply:
    """A `ReplySource` over a copy of another process's live reply, going on from the
    database if the copy is lost."""

    def __init__(
        self, copy: ReplyLog, *, fallback: Callable[[], Awaitable[StoredReply | None]]
    ) -> None:
        self._copy = copy
        self._fallback = fallback

    def has_events_after(self, after: int) -> bool:
        return self._copy.has_events_after(after)

    async def follow(self, after: int) -> AsyncIterator[list[LogEvent]]:
        position = after
        async for batch in self._copy.follow(after, ready=_ready, on_followers=_no_count):
            if batch:
                position = batch[-1].id
            yield batch
        if self._copy.finished:
            return
        stored = await self._fallback()
        if stored is not None:
            async for batch in stored.follow(position):
                yield batch


class ReplyStreams:
    """This process's Redis side of live replies: its outbox and its copies."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self.redis = connect_redis(settings.redis_url)
        check_interval = settings.heartbeat_interval
        # Its reads wait up to the BLOCK time by design: bounded a little above that.
        self._reader = connect_redis(settings.redis_url, read_timeout=check_interval + 5.0)
        self.outbox = Outbox(
            self.redis,
            maxlen=settings.redis_stream_maxlen,
            live_ttl=settings.stale_reply_after,
            ended_ttl=settings.redis_stream_ttl,
        )
        self.mirrors = Mirrors(
            self.redis,
            self._reader,
            ping_interval=settings.ping_interval,
            check_interval=check_interval,
        )

    def start(self) -> None:
        self.outbox.start()
        self.mirrors.start()

    async def close(self) -> None:
        """After the runs' shutdown: their final events are sent before the clients close."""
        await self.outbox.close()
        await self.mirrors.close()
        await self._reader.aclose()
        await self.redis.aclose()
