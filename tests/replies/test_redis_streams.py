"""A reply's events through a real Redis, in one process: the owner's outbox and another
process's copy (tests/test_scale_out.py runs them in two real server processes)."""

from __future__ import annotations

import asyncio
import uuid

from app.ops.redis import client_options, connect_redis
from app.replies.log import ReplyLog
from app.replies.redis_log import Mirrors, Outbox, RedisReply, stream_key
from app.replies.wire import Event


async def _no_fallback() -> None:
    raise AssertionError("a whole stream needs no database")


def test_a_follower_arriving_as_the_reply_ends_still_gets_the_final_event(redis_url):
    """Pub/sub would lose the final event sent between a follower's read and its subscribe;
    the copy reads the stream from the first entry, then blocks from the last one it has."""

    async def scenario() -> None:
        redis, reader = connect_redis(redis_url), connect_redis(redis_url, read_timeout=None)
        outbox = Outbox(redis, maxlen=1000, live_ttl=30, ended_ttl=30)
        mirrors = Mirrors(redis, reader, ping_interval=15, check_interval=1)
        mirrors.start()
        message_id = str(uuid.uuid4())
        owner = ReplyLog(ping_interval=15)
        owner.feed = outbox.feed(message_id, owner.events)
        try:
            owner.append(Event.META, {"message_id": message_id})
            owner.append(Event.DELTA, {"content": "a"})
            await outbox.flushed()
            copy = await mirrors.open(message_id)
            assert copy is not None and not copy.finished
            owner.finish(Event.DONE, {"status": "complete"})  # while the copy's reader waits
            source = RedisReply(copy, fallback=_no_fallback)
            followed = [event async for batch in source.follow(0) for event in batch]
            assert followed == owner.events  # the owner's ids, data and frames

            late = await mirrors.open(message_id)  # after the end: the final event is there
            assert late is not None and late.finished and late.events == owner.events
        finally:
            await outbox.close()
            await mirrors.close()
            await reader.aclose()
            await redis.aclose()

    asyncio.run(scenario())


def test_the_owner_sends_one_pipeline_per_loop_pass_not_a_round_trip_per_token(redis_url):
    async def scenario() -> None:
        redis = connect_redis(redis_url)
        pipelines = 0
        make_pipeline = redis.pipeline

        def counted(**options):
            nonlocal pipelines
            pipelines += 1
            return make_pipeline(**options)

        redis.pipeline = counted  # type: ignore[method-assign]
        outbox = Outbox(redis, maxlen=1000, live_ttl=30, ended_ttl=30)
        message_id = str(uuid.uuid4())
        owner = ReplyLog(ping_interval=15)
        owner.feed = outbox.feed(message_id, owner.events)
        try:
            for index in range(200):  # one loop pass: a burst of tokens
                owner.append(Event.DELTA, {"content": str(index)})
            await outbox.flushed()
            assert pipelines == 1
            assert await redis.xlen(stream_key(message_id)) == 200
            entries = await redis.xrange(stream_key(message_id), count=2)
            assert [entry_id for entry_id, _ in entries] == [b"0-1", b"0-2"]
            assert 0 < await redis.pttl(stream_key(message_id)) <= 30_000  # live: expires
        finally:
            await outbox.close()
            await redis.aclose()

    asyncio.run(scenario())


def test_close_wakes_the_blocking_reader_and_never_cancels_it_mid_read(redis_url):
    """A task cancelled inside redis-py's blocking XREAD can go on waiting on its socket for
    ever (at load 20 one `close` in ten hung so). Closing wakes the reader, which ends between
    two reads on its own, never cancelled. Its BLOCK here is ten minutes: a reader the wake
    did not reach would hold `close` past pytest-timeout's 300 s and fail the test."""

    async def scenario() -> None:
        redis, reader = connect_redis(redis_url), connect_redis(redis_url, read_timeout=None)
        mirrors = Mirrors(redis, reader, ping_interval=15, check_interval=600)
        mirrors.start()
        try:
            owner = ReplyLog(ping_interval=15)
            outbox = Outbox(redis, maxlen=1000, live_ttl=30, ended_ttl=30)
            message_id = str(uuid.uuid4())
            owner.feed = outbox.feed(message_id, owner.events)
            owner.append(Event.META, {"message_id": message_id})
            await outbox.flushed()
            copy = await mirrors.open(message_id)  # a live copy: the reader blocks on it
            assert copy is not None
            reading = mirrors._reading
            await mirrors.close()
            assert reading is not None and reading.done() and not reading.cancelled()
            assert copy.lost  # its followers go on from the database
            await outbox.close()
        finally:
            await reader.aclose()
            await redis.aclose()

    asyncio.run(scenario())


def test_rediss_urls_skip_certificate_checks_as_herokus_key_value_store_needs():
    # Its certificate is self-signed: verifying it could only fail.
    assert client_options("rediss://:p@host:6380", read_timeout=5)["ssl_cert_reqs"] == "none"
    assert "ssl_cert_reqs" not in client_options("redis://host:6379", read_timeout=5)
