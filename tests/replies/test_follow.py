"""Where a reply is followed from (`app.replies.follow.find_reply`), server-free, on a real
database and, where named, a real Redis: the database for a reply no process has live, a Redis
copy for one live elsewhere, and nothing, from every source, for another user's.

This process's own live run (the first place `find_reply` looks) is followed in the server
tests (tests/http/test_chat.py, test_eventsource_resume.py): here no run is live, so the
registry is an empty one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.core.states import GenerationStatus, MessageStatus
from app.replies.follow import find_reply
from app.replies.log import ReplyLog
from app.replies.redis_log import RedisReply, ReplyStreams
from app.replies.replay import StoredReply
from app.replies.wire import Event, LogEvent, meta_payload
from app.settings import Settings
from app.storage.ledger import GenerationRecord
from app.storage.replies import TurnIds
from app.storage.store import Store
from app.storage.tables import new_id, now
from tests.support import migrated_store, turn_rows

NO_RUNS: dict[str, Any] = {}  # the registry's one question here is `get(message_id)`: none live


def _settings(database_url: str, **values: Any) -> Settings:
    return Settings(
        _env_file=None,
        app_env="test",
        database_url=database_url,
        checkpoint_interval=0.01,
        **values,
    )


async def _turn(store: Store) -> tuple[TurnIds, LogEvent]:
    """A turn's rows, its reply `streaming`; and the reply's `meta` as any source sends it."""
    ids = TurnIds.allocate(None)
    await turn_rows(store, ids)
    meta = meta_payload(
        conversation_id=ids.conversation_id,
        message_id=ids.message_id,
        user_message_id=ids.user_message_id,
        agent="chat",
        model="openai/gpt-4o",
    )
    return ids, LogEvent.make(1, Event.META, meta)


async def _followed(source: Any, after: int = 0) -> list[LogEvent]:
    return [event async for batch in source.follow(after) for event in batch]


def test_a_reply_live_nowhere_is_followed_from_the_database(database):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            settings = _settings(database.url)
            ids, meta = await _turn(store)
            await store.replies.finish(
                message_id=ids.message_id,
                conversation_id=ids.conversation_id,
                agent="chat",
                user_id="dev",
                status=MessageStatus.COMPLETE,
                content="hi",
                event_lengths=[2],
                model="openai/gpt-4o",
                finish_reason="stop",
                error_code=None,
                error_message=None,
                records=[
                    GenerationRecord(
                        id=new_id(),
                        attempt=1,
                        requested_model="openai/gpt-4o",
                        started_at=now(),
                        status=GenerationStatus.COMPLETE,
                    )
                ],
            )
            source = await find_reply(
                ids.message_id, user_id="dev", runs=NO_RUNS, store=store, settings=settings
            )
            assert isinstance(source, StoredReply)
            events = await _followed(source)
            assert events[0] == meta
            assert [(e.id, e.event) for e in events[1:]] == [(2, Event.DELTA), (3, Event.DONE)]
            assert not source.has_events_after(3)

    asyncio.run(scenario())


def test_another_users_reply_is_not_found_from_any_source(database, redis_url):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            settings = _settings(database.url, redis_url=redis_url)
            streams = ReplyStreams(settings)
            streams.start()
            try:
                ids, meta = await _turn(store)
                owner = ReplyLog(ping_interval=15)
                owner.feed = streams.outbox.feed(ids.message_id, owner.events)
                owner.add(meta)
                await streams.outbox.flushed()  # live in Redis too
                for where in ({}, {"streams": streams}):
                    for message_id in (ids.message_id, new_id()):
                        found = await find_reply(
                            message_id,
                            user_id="eve",
                            runs=NO_RUNS,
                            store=store,
                            settings=settings,
                            **where,
                        )
                        assert found is None, (where, message_id)
            finally:
                await streams.close()

    asyncio.run(scenario())


def test_a_reply_live_in_another_process_is_followed_through_redis(database, redis_url):
    """Event by event from the owner's stream, not by checkpoints; the database has only the
    turn's rows (no checkpoint yet)."""

    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            settings = _settings(database.url, redis_url=redis_url)
            owner_side, follower_side = ReplyStreams(settings), ReplyStreams(settings)
            owner_side.start()
            follower_side.start()
            try:
                ids, meta = await _turn(store)
                owner = ReplyLog(ping_interval=15)
                owner.feed = owner_side.outbox.feed(ids.message_id, owner.events)
                owner.add(meta)
                owner.append(Event.DELTA, {"content": "a"})
                await owner_side.outbox.flushed()

                source = await find_reply(
                    ids.message_id,
                    user_id="dev",
                    runs=NO_RUNS,
                    store=store,
                    settings=settings,
                    streams=follower_side,
                )
                assert isinstance(source, RedisReply)
                following = asyncio.ensure_future(_followed(source, 1))
                owner.append(Event.DELTA, {"content": "b"})
                owner.finish(Event.DONE, {"status": "complete"})
                assert await following == owner.events[1:]  # the owner's ids and frames

                # A reply Redis has no stream of (never published, or expired): the database.
                other, _ = await _turn(store)
                source = await find_reply(
                    other.message_id,
                    user_id="dev",
                    runs=NO_RUNS,
                    store=store,
                    settings=settings,
                    streams=follower_side,
                )
                assert isinstance(source, StoredReply)
            finally:
                await owner_side.close()
                await follower_side.close()

    asyncio.run(scenario())


def test_a_lost_redis_copy_goes_on_from_the_database(database, redis_url):
    """Redis went away mid-reply (here: the stream is deleted under the copy): its follower
    carries on from the event it reached, through the database's checkpoints, to the end."""

    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            settings = _settings(database.url, redis_url=redis_url)
            owner_side, follower_side = ReplyStreams(settings), ReplyStreams(settings)
            owner_side.start()
            follower_side.start()
            try:
                ids, meta = await _turn(store)
                owner = ReplyLog(ping_interval=15)
                owner.feed = owner_side.outbox.feed(ids.message_id, owner.events)
                owner.add(meta)
                await owner_side.outbox.flushed()
                source = await find_reply(
                    ids.message_id,
                    user_id="dev",
                    runs=NO_RUNS,
                    store=store,
                    settings=settings,
                    streams=follower_side,
                )
                assert isinstance(source, RedisReply)
                batches = source.follow(0)
                assert await anext(batches) == [meta]

                copy = await follower_side.mirrors.open(ids.message_id)
                assert copy is not None
                copy.lose()  # as `Mirrors` does when Redis or the stream goes away
                await store.replies.finish(
                    message_id=ids.message_id,
                    conversation_id=ids.conversation_id,
                    agent="chat",
                    user_id="dev",
                    status=MessageStatus.ERROR,
                    content="",
                    event_lengths=[],
                    model=None,
                    finish_reason=None,
                    error_code="upstream_timeout",
                    error_message="timed out",
                    records=[],
                )
                rest = [event async for batch in batches for event in batch]
                assert [(e.id, e.event) for e in rest] == [(2, Event.ERROR)]
                assert rest[0].payload["code"] == "upstream_timeout"
            finally:
                await owner_side.close()
                await follower_side.close()

    asyncio.run(scenario())
