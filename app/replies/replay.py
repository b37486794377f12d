"""A reply's events rebuilt from the database, for subscribers after the run left memory.

The rebuilt log has the ids the live run used: meta (1), one delta per recorded event length,
and the final event. A reply still `streaming` here belongs to another process (another dyno,
or one that died before start-up recovery): it is followed through its checkpoints.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from app.billing.money import from_picos
from app.replies.events import LogEvent, final_event, meta_payload
from app.replies.states import MessageStatus
from app.storage.store import Store


async def replay_log(store: Store, *, message_id: str) -> tuple[list[LogEvent], bool] | None:
    """(events, finished) for an assistant message, or None if there is no such message."""
    row = await store.replies.get(message_id=message_id)
    if row is None:
        return None
    events = [
        LogEvent.make(
            1,
            "meta",
            meta_payload(
                conversation_id=row["conversation_id"],
                message_id=message_id,
                user_message_id=row["user_message_id"],
                agent=row["agent"],
                model=row["requested_model"],
            ),
        )
    ]
    content, offset = row["content"], 0
    for length in json.loads(row["event_lengths"] or "[]"):
        events.append(
            LogEvent.make(len(events) + 1, "delta", {"content": content[offset : offset + length]})
        )
        offset += length
    if row["status"] == MessageStatus.STREAMING:
        return events, False
    name, payload = final_event(
        status=MessageStatus(row["status"]),
        message_id=message_id,
        finish_reason=row["finish_reason"],
        model=row["model"],
        prompt_tokens=row["prompt_tokens"] or 0,
        completion_tokens=row["completion_tokens"] or 0,
        cost=from_picos(row["cost_picousd"]),
        error_code=row["error_code"],
        error_message=row["error_message"],
    )
    events.append(LogEvent.make(len(events) + 1, name, payload))
    return events, True


async def follow_stored(
    store: Store, *, message_id: str, after: int, poll_interval: float, ping_interval: float
) -> AsyncIterator[list[LogEvent]]:
    """Events with id > `after` from the database, in batches, polling while the reply is
    still streaming; an empty batch when nothing went out for `ping_interval` seconds."""
    loop = asyncio.get_running_loop()
    position, sent_at = after, loop.time()
    while True:
        found = await replay_log(store, message_id=message_id)
        if found is None:
            return
        events, finished = found
        if events[position:]:
            yield events[position:]
            sent_at = loop.time()
        position = max(position, len(events))
        if finished:
            return
        if loop.time() - sent_at >= ping_interval:
            yield []
            sent_at = loop.time()
        await asyncio.sleep(min(poll_interval, sent_at + ping_interval - loop.time()))
