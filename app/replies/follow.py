"""Following a reply from an event id, wherever its events are: the one place that picks.

this process's live run     its log, event by event (`runs.Run`)
a Redis Stream              another process's live reply, event by event, when REDIS_URL
                            is set (`redis_log.RedisReply`)
the database                a finished reply, or another process's live one through its
                            checkpoints (`replay.StoredReply`)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Protocol

from app.replies.redis_log import RedisReply, ReplyStreams
from app.replies.registry import Runs
from app.replies.replay import StoredReply
from app.replies.runs import Run
from app.replies.wire import LogEvent
from app.settings import Settings
from app.storage.store import Store


class ReplySource(Protocol):
    def has_events_after(self, after: int) -> bool:
        """Whether a follower from event `after` has anything to read, now or later."""
        ...

    def follow(self, after: int) -> AsyncIterator[list[LogEvent]]:
        """Events with id > `after` in batches until the final one; an empty batch is a
        keep-alive ping (nothing went out for PING_INTERVAL seconds)."""
        ...


def live_run(runs: Runs, *, message_id: str, user_id: str) -> Run | None:
    """This process's live run of the user's reply, if there is one. Another user's run is
    not there for them: the caller goes on to the database, which finds nothing either."""
    run = runs.get(message_id)
    return run if run is not None and run.request.user_id == user_id else None


async def find_reply(
    message_id: str,
    *,
    user_id: str,
    runs: Runs,
    store: Store,
    settings: Settings,
    streams: ReplyStreams | None = None,
    owner_checked: bool = False,
) -> ReplySource | None:
    """Where the user's reply's events can be read from; None if they have no such reply
    (another user's answers exactly as one that does not exist, from every source).

    `owner_checked`: the caller has read the reply's row with `user_id` already
    (`store.replies.get`), so the Redis source needs no second read.
    """
    run = live_run(runs, message_id=message_id, user_id=user_id)
    if run is not None:
        return run

    def stored() -> Awaitable[StoredReply | None]:
        return StoredReply.load(
            store,
            message_id=message_id,
            user_id=user_id,
            poll_interval=settings.checkpoint_interval,
            ping_interval=settings.ping_interval,
        )

    if streams is not None:
        # A copy from Redis carries no owner: the database row says whose reply it is, before
        # any copy is opened (another user's is never copied, nor followed).
        if (
            not owner_checked
            and await store.replies.get(message_id=message_id, user_id=user_id) is None
        ):
            return None
        if (copy := await streams.mirrors.open(message_id)) is not None:
            # Live in another process (or just ended): event by event, not by checkpoints.
            return RedisReply(copy, fallback=stored)
    return await stored()
