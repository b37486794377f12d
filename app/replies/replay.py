"""A reply's events rebuilt from the database, for followers after the run left memory.

The rebuilt log has the ids the live run used: meta (1), one reasoning, delta or annotation
event per recorded event length (`wire.stored_events`), and the final event. A reply
still `streaming` here belongs to another process (another dyno, or one that died before
start-up recovery): it is followed through its checkpoints.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from app.core.money import from_picos
from app.core.states import MessageStatus
from app.replies.wire import LogEvent, final_event, meta_payload, stored_events
from app.storage.store import Store


async def replay_log(
    store: Store, *, message_id: str, user_id: str
) -> tuple[list[LogEvent], bool] | None:
    """(events, finished) for the user's assistant message, or None if they have no such
    message."""
    row = await store.replies.get(message_id=message_id, user_id=user_id)
    if row is None:
        return None
    events = stored_events(
        meta_payload(
            conversation_id=row["conversation_id"],
            message_id=message_id,
            user_message_id=row["user_message_id"],
            agent=row["agent"],
            model=row["requested_model"],
            history=None if row["history"] is None else json.loads(row["history"]),
        ),
        content=row["content"],
        reasoning=row["reasoning"],
        annotations=json.loads(row["annotations"] or "[]"),
        lengths=json.loads(row["event_lengths"] or "[]"),
    )
    if row["status"] == MessageStatus.STREAMING:
        return events, False
    name, payload = final_event(
        status=MessageStatus(row["status"]),
        message_id=message_id,
        finish_reason=row["finish_reason"],
        model=row["model"] or row["requested_model"],  # none answered: the one asked
        prompt_tokens=row["prompt_tokens"] or 0,
        completion_tokens=row["completion_tokens"] or 0,
        reasoning_tokens=row["reasoning_tokens"] or 0,
        cost=from_picos(row["cost_picousd"]),
        error_code=row["error_code"],
        error_message=row["error_message"],
        cache_saved=row["cache_saved_picousd"],
    )
    events.append(LogEvent.make(len(events) + 1, name, payload))
    return events, True


class StoredReply:
    """A reply read from the database (a `ReplySource`): its events as last loaded, polled
    again while it is still streaming in another process."""

    def __init__(
        self,
        store: Store,
        *,
        message_id: str,
        user_id: str,
        events: list[LogEvent],
        finished: bool,
        poll_interval: float,
        ping_interval: float,
    ) -> None:
        self._store = store
        self._message_id = message_id
        self._user_id = user_id
        self._events = events
        self._finished = finished
        self._poll_interval = poll_interval
        self._ping_interval = ping_interval

    @classmethod
    async def load(
        cls,
        store: Store,
        *,
        message_id: str,
        user_id: str,
        poll_interval: float,
        ping_interval: float,
    ) -> StoredReply | None:
        """The user's stored reply, or None if they have no such assistant message."""
        found = await replay_log(store, message_id=message_id, user_id=user_id)
        if found is None:
            return None
        events, finished = found
        return cls(
            store,
            message_id=message_id,
            user_id=user_id,
            events=events,
            finished=finished,
            poll_interval=poll_interval,
            ping_interval=ping_interval,
        )

    def has_events_after(self, after: int) -> bool:
        return not self._finished or after < len(self._events)

    async def follow(self, after: int) -> AsyncIterator[list[LogEvent]]:
        """Events with id > `after`, in batches, polling while the reply is still streaming;
        an empty batch when nothing went out for the ping interval."""
        loop = asyncio.get_running_loop()
        events, finished = self._events, self._finished
        position, sent_at = after, loop.time()
        while True:
            if events[position:]:
                yield events[position:]
                sent_at = loop.time()
            position = max(position, len(events))
            if finished:
                return
            if loop.time() - sent_at >= self._ping_interval:
                yield []
                sent_at = loop.time()
            await asyncio.sleep(
                min(self._poll_interval, sent_at + self._ping_interval - loop.time())
            )
            found = await replay_log(
                self._store, message_id=self._message_id, user_id=self._user_id
            )
            if found is None:
                return  # deleted meanwhile
            events, finished = found
