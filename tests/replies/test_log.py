"""The live reply log (`app.replies.log.ReplyLog`), server-free: numbering, followers from any
event id, batches, pings, the end and a lost copy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from app.replies.log import ReplyLog
from app.replies.wire import Event, LogEvent

LONG = 3600.0  # a ping interval no test waits for


async def _ready() -> None:
    pass


def _follow(log: ReplyLog, after: int, counts: list[int] | None = None):
    return log.follow(
        after, ready=_ready, on_followers=[].append if counts is None else counts.append
    )


async def _take(batches: AsyncIterator[list[LogEvent]]) -> list[LogEvent]:
    return await anext(batches)


def test_events_are_numbered_from_one_and_the_final_one_ends_the_log():
    async def scenario() -> None:
        log = ReplyLog(ping_interval=LONG)
        log.append(Event.META, {"message_id": "m"})
        log.append(Event.DELTA, {"content": "a"})
        assert not log.finished and log.has_events_after(2)  # more may come
        log.finish(Event.DONE, {"status": "complete"})
        assert [(e.id, e.event) for e in log.events] == [
            (1, Event.META),
            (2, Event.DELTA),
            (3, Event.DONE),
        ]
        assert log.events[1] == LogEvent.make(2, Event.DELTA, {"content": "a"})
        assert log.finished and log.has_events_after(2) and not log.has_events_after(3)
        await log.wait()  # returns at once: the final event is there

    asyncio.run(scenario())


def test_a_follower_gets_the_events_after_its_id_then_each_as_it_comes():
    async def scenario() -> None:
        log = ReplyLog(ping_interval=LONG)
        for content in "abc":
            log.append(Event.DELTA, {"content": content})
        batches = _follow(log, 1)
        assert [e.id for e in await _take(batches)] == [2, 3]  # what there is, in one batch
        waiting = asyncio.ensure_future(_take(batches))
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing new: it waits
        log.append(Event.DELTA, {"content": "d"})
        assert [e.id for e in await waiting] == [4]
        log.finish(Event.DONE, {})
        assert [e.id for e in await _take(batches)] == [5]
        assert [batch async for batch in batches] == []  # ended after the final event

    asyncio.run(scenario())


def test_a_follower_that_fell_behind_gets_what_piled_up_in_one_batch():
    async def scenario() -> None:
        log = ReplyLog(ping_interval=LONG)
        log.append(Event.META, {})
        batches = _follow(log, 0)
        assert [e.id for e in await _take(batches)] == [1]
        for index in range(50):  # a burst while the follower sends
            log.append(Event.DELTA, {"content": str(index)})
        log.finish(Event.DONE, {})
        rest = [batch async for batch in batches]
        assert [len(batch) for batch in rest] == [51]
        assert rest[0] == log.events[1:]

    asyncio.run(scenario())


def test_a_follower_from_the_end_or_beyond_gets_nothing():
    async def scenario() -> None:
        log = ReplyLog(ping_interval=LONG)
        log.append(Event.META, {})
        log.finish(Event.ERROR, {"code": "interrupted"})
        assert [batch async for batch in _follow(log, 2)] == []
        assert [batch async for batch in _follow(log, 9)] == []
        assert [e.id async for batch in _follow(log, -5) for e in batch] == [1, 2]

    asyncio.run(scenario())


def test_ready_is_awaited_before_the_first_batch():
    async def scenario() -> None:
        log = ReplyLog(ping_interval=LONG)
        log.append(Event.META, {})
        saved = asyncio.Event()

        async def ready() -> None:
            await saved.wait()

        first = asyncio.ensure_future(
            anext(log.follow(0, ready=ready, on_followers=lambda count: None))
        )
        await asyncio.sleep(0.01)
        assert not first.done()  # `meta` says the turn exists: not before it does
        saved.set()
        assert [e.id for e in await first] == [1]

    asyncio.run(scenario())


def test_followers_are_counted_as_they_come_and_go():
    async def scenario() -> None:
        log = ReplyLog(ping_interval=LONG)
        log.append(Event.META, {})
        counts: list[int] = []
        one, two = _follow(log, 0, counts), _follow(log, 0, counts)
        await _take(one)
        await _take(two)
        assert log.followers == 2
        waiting = asyncio.ensure_future(_take(one))
        await asyncio.sleep(0)
        waiting.cancel()  # a client gone while its follower waited
        await asyncio.gather(waiting, return_exceptions=True)
        await one.aclose()
        assert log.followers == 1
        log.finish(Event.DONE, {})
        assert [batch async for batch in two] == [log.events[1:]]
        assert counts == [1, 2, 1, 0]
        assert log._waiters == []  # the one that left while waiting is not woken later

    asyncio.run(scenario())


def test_an_idle_follower_gets_an_empty_batch_for_a_ping():
    async def scenario() -> None:
        log = ReplyLog(ping_interval=0.01)
        log.append(Event.META, {})
        batches = _follow(log, 0)
        assert [e.id for e in await _take(batches)] == [1]
        assert await _take(batches) == []  # nothing went out for the interval
        log.append(Event.DELTA, {"content": "a"})
        assert [e.id for e in await _take(batches)] == [2]
        await batches.aclose()

    asyncio.run(scenario())


def test_a_lost_copy_ends_its_followers_without_a_final_event():
    """A mirror cut off from Redis: followers stop where they are (and go on from the
    database, `redis_log.RedisReply`)."""

    async def scenario() -> None:
        copy = ReplyLog(ping_interval=LONG)
        copy.append(Event.META, {})
        batches = _follow(copy, 0)
        assert [e.id for e in await _take(batches)] == [1]
        rest = asyncio.ensure_future(_collect(batches))
        await asyncio.sleep(0)
        copy.lose()
        assert await rest == []
        assert copy.lost and not copy.finished

    asyncio.run(scenario())


def test_waiting_for_the_end():
    async def scenario() -> None:
        log = ReplyLog(ping_interval=LONG)
        log.append(Event.META, {})
        ended = asyncio.ensure_future(log.wait())
        log.append(Event.DELTA, {"content": "a"})
        await asyncio.sleep(0)
        assert not ended.done()
        log.finish(Event.DONE, {})
        await ended

    asyncio.run(scenario())


async def _collect(batches: AsyncIterator[list[LogEvent]]) -> list[list[LogEvent]]:
    return [batch async for batch in batches]
