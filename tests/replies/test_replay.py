"""A reply's events rebuilt from the database (`app.replies.replay`), server-free, on a real
database (SQLite, or PostgreSQL under scripts/test): the same ids, data and frames as the live
run's, and a reply still streaming elsewhere followed through its checkpoints."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from app.core.states import CostSource, GenerationStatus, MessageStatus
from app.replies.log import ReplyLog
from app.replies.replay import StoredReply, replay_log
from app.replies.wire import Event, event_lengths, final_event, meta_payload
from app.storage.ledger import GenerationRecord
from app.storage.replies import TurnIds
from app.storage.store import Store
from app.storage.tables import new_id, now
from tests.support import migrated_store, turn_rows

MODEL = "openai/gpt-4o"  # what `turn_rows` asks for
CITATION = {  # `Citation.to_json`'s shape
    "url": "https://example.com",
    "title": "Ex",
    "content": "a quote",
    "start_index": 0,
    "end_index": 2,
}


@dataclass
class LiveReply:
    """What a run keeps of a reply while it streams: its log, and the texts of its events."""

    ids: TurnIds
    log: ReplyLog = field(default_factory=lambda: ReplyLog(ping_interval=15))
    parts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)

    def stream(self, name: Event, value: Any) -> None:
        if name == Event.DELTA:
            self.parts.append(value)
        elif name == Event.REASONING:
            self.thoughts.append(value)
        else:
            self.citations.append(value)
        self.log.append(name, value if name == Event.ANNOTATION else {"content": value})

    def saved(self) -> dict[str, Any]:
        """The fields a checkpoint and the final write have in common."""
        return {
            "message_id": self.ids.message_id,
            "conversation_id": self.ids.conversation_id,
            "agent": "chat",
            "user_id": "dev",
            "content": "".join(self.parts),
            "event_lengths": event_lengths(self.log.events, self.parts, self.thoughts),
            "reasoning": "".join(self.thoughts),
            "annotations": self.citations,
        }


async def _started(store: Store) -> LiveReply:
    ids = TurnIds.allocate(None)
    await turn_rows(store, ids)
    live = LiveReply(ids)
    live.log.append(
        Event.META,
        meta_payload(
            conversation_id=ids.conversation_id,
            message_id=ids.message_id,
            user_message_id=ids.user_message_id,
            agent="chat",
            model=MODEL,
        ),
    )
    return live


async def _checkpoint(store: Store, live: LiveReply) -> None:
    await store.replies.checkpoint(**live.saved(), records=[])


def _record(**values: Any) -> GenerationRecord:
    return GenerationRecord(
        id=new_id(),
        attempt=1,
        requested_model=MODEL,
        started_at=now(),
        ended_at=now(),
        **values,
    )


async def _finish(
    store: Store,
    live: LiveReply,
    *,
    status: MessageStatus,
    record: GenerationRecord,
    error: tuple[str, str] | None = None,
) -> None:
    """The final write, and the final event a live run would append for it."""
    finish_reason = None if error else "stop"
    await store.replies.finish(
        **live.saved(),
        status=status,
        model=record.model,
        finish_reason=finish_reason,
        error_code=error[0] if error else None,
        error_message=error[1] if error else None,
        records=[record],
    )
    live.log.finish(
        *final_event(
            status=status,
            message_id=live.ids.message_id,
            finish_reason=finish_reason,
            model=record.model or MODEL,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            reasoning_tokens=record.reasoning_tokens,
            cost=record.cost,
            error_code=error[0] if error else None,
            error_message=error[1] if error else None,
            cache_saved=record.cache_saved,
        )
    )


def _stream_some(live: LiveReply) -> None:
    live.stream(Event.REASONING, "thinking… ")
    live.stream(Event.REASONING, "done")
    live.stream(Event.DELTA, "Hé")
    live.stream(Event.ANNOTATION, CITATION)
    live.stream(Event.DELTA, "llo 👋")


def test_a_finished_reply_replays_as_it_streamed_byte_for_byte(database):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            live = await _started(store)
            _stream_some(live)
            await _checkpoint(store, live)
            live.stream(Event.REASONING, "more")
            live.stream(Event.DELTA, "!")
            await _finish(
                store,
                live,
                status=MessageStatus.COMPLETE,
                record=_record(
                    status=GenerationStatus.COMPLETE,
                    generation_id="gen-1",
                    model="openai/gpt-4o-2024",
                    prompt_tokens=11,
                    completion_tokens=9,
                    reasoning_tokens=3,
                    cost=Decimal("0.000321"),
                    cost_source=CostSource.USAGE,
                ),
            )
            found = await replay_log(store, message_id=live.ids.message_id, user_id="dev")
            assert found is not None
            events, finished = found
            assert finished
            assert [event.frame for event in events] == [event.frame for event in live.log.events]
            assert events == live.log.events
            assert events[-1].event == Event.DONE
            assert events[-1].payload["usage"]["total_tokens"] == 20

    asyncio.run(scenario())


def test_a_failed_reply_replays_its_error_and_whether_to_retry(database):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            live = await _started(store)
            live.stream(Event.DELTA, "Hal")
            await _finish(
                store,
                live,
                status=MessageStatus.ERROR,
                record=_record(status=GenerationStatus.ERROR, error_code="upstream_503"),
                error=("upstream_503", "the provider is busy"),
            )
            found = await replay_log(store, message_id=live.ids.message_id, user_id="dev")
            assert found is not None and found == (live.log.events, True)
            error = found[0][-1]
            assert error.event == Event.ERROR
            assert error.payload["retryable"] is True  # from the code, as the live run said

    asyncio.run(scenario())


def test_a_reply_still_streaming_replays_to_its_last_checkpoint(database):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            live = await _started(store)
            found = await replay_log(store, message_id=live.ids.message_id, user_id="dev")
            assert found == ([live.log.events[0]], False)  # meta: the turn is saved

            _stream_some(live)
            await _checkpoint(store, live)
            live.stream(Event.DELTA, "not checkpointed yet")
            found = await replay_log(store, message_id=live.ids.message_id, user_id="dev")
            assert found == (live.log.events[:-1], False)

    asyncio.run(scenario())


def test_another_users_reply_or_none_replays_as_nothing(database):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            live = await _started(store)
            assert await replay_log(store, message_id=live.ids.message_id, user_id="eve") is None
            assert await replay_log(store, message_id=new_id(), user_id="dev") is None
            assert (
                await StoredReply.load(
                    store,
                    message_id=live.ids.message_id,
                    user_id="eve",
                    poll_interval=0.01,
                    ping_interval=15,
                )
                is None
            )

    asyncio.run(scenario())


def test_a_stored_reply_is_followed_from_any_event_id(database):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            live = await _started(store)
            _stream_some(live)
            await _finish(
                store,
                live,
                status=MessageStatus.STOPPED,
                record=_record(status=GenerationStatus.CANCELLED, model=MODEL),
            )
            stored = await StoredReply.load(
                store,
                message_id=live.ids.message_id,
                user_id="dev",
                poll_interval=0.01,
                ping_interval=15,
            )
            assert stored is not None
            everything = live.log.events
            for after in range(len(everything) + 1):
                followed = [event async for batch in stored.follow(after) for event in batch]
                assert followed == everything[after:]
                assert stored.has_events_after(after) == (after < len(everything))

    asyncio.run(scenario())


def test_a_reply_streaming_elsewhere_is_followed_through_its_checkpoints(database):
    """Another process writes the checkpoints and the end; the follower polls for them and
    gets each event once, in order, ending with the final one."""

    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            live = await _started(store)
            stored = await StoredReply.load(
                store,
                message_id=live.ids.message_id,
                user_id="dev",
                poll_interval=0.01,
                ping_interval=15,
            )
            assert stored is not None and stored.has_events_after(1)
            batches = stored.follow(0)
            assert await anext(batches) == live.log.events[:1]

            _stream_some(live)
            await _checkpoint(store, live)
            assert await anext(batches) == live.log.events[1:]

            live.stream(Event.DELTA, "!")
            await _finish(
                store,
                live,
                status=MessageStatus.COMPLETE,
                record=_record(status=GenerationStatus.COMPLETE, model=MODEL),
            )
            rest = [event async for batch in batches for event in batch]
            assert rest == live.log.events[-2:]
            assert rest[-1].event == Event.DONE

    asyncio.run(scenario())


def test_a_follower_with_nothing_new_for_the_ping_interval_gets_a_ping(database):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            live = await _started(store)
            stored = await StoredReply.load(
                store,
                message_id=live.ids.message_id,
                user_id="dev",
                poll_interval=0.01,
                ping_interval=0.02,
            )
            assert stored is not None
            batches = stored.follow(1)
            assert await anext(batches) == []  # a keep-alive: nothing went out
            await batches.aclose()

    asyncio.run(scenario())
