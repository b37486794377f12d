"""Server-Sent Events responses for reply streams, and the `Last-Event-ID` a client resumes from."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from app.core.stages import StageProbe
from app.errors import ApiError
from app.http.state import AppState
from app.replies.registry import Runs
from app.replies.wire import (
    PING,
    REPLY_EVENT_ID,
    RETRY_FIELD,
    Event,
    LogEvent,
    frames,
    reply_id_prefix,
)

# What keeps Heroku-like routers and nginx from holding the stream back.
STREAM_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
# Seconds past SHUTDOWN_GRACE for a cancelled run's final write and event to get out.
SHUTDOWN_MARGIN = 3.0


def last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ApiError(
            400, "invalid_last_event_id", "Last-Event-ID must be a non-negative event id"
        )
    return value


def reply_event_id(request: Request) -> tuple[str, int] | None:
    """(message_id, n) from a one-step GET form's `Last-Event-ID` (or `?last_event_id=`): the
    reply a reconnecting EventSource is in, and the last event it has. None: a new turn."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not raw:
        return None
    found = REPLY_EVENT_ID.fullmatch(raw.strip())
    if found is None:
        raise ApiError(
            400, "invalid_last_event_id", "Last-Event-ID must be an event id: <message_id>:<n>"
        )
    return found.group(1), int(found.group(2))


async def _frames(
    batches: AsyncIterator[list[LogEvent]], id_prefix: bytes | None, probe: StageProbe | None
) -> AsyncIterator[bytes]:
    """The wire bytes of each batch; an empty batch is a keep-alive ping."""
    async for batch in batches:
        if not batch:
            yield PING
            continue
        sent = frames(batch, id_prefix)
        yield RETRY_FIELD + sent if batch[0].id == 1 else sent
        if probe is not None and any(event.event == Event.DELTA for event in batch):
            probe.relayed()  # resumed here once the frames were sent


async def drain_on_shutdown(runs: Runs) -> None:
    """Start draining the live runs when sse-starlette sees SIGTERM: one task per process.

    It is the signal that starts each stream's grace period (sse-starlette's one watcher of
    uvicorn's exit flag), awaited once here rather than by a task in every response: an idle
    stream's memory is mostly its tasks (tracemalloc over `python -m bench --idle
    1000`'s idle streams: 4-5 KB of 88 for this one; docs/benchmarks.md step 4). The method is
    sse-starlette's own (3.x); the SIGTERM tests in test_lifecycle fail if it changes.
    """
    await EventSourceResponse._listen_for_exit_signal()
    runs.begin_drain()


class SavedFirst:
    """A new turn's stream, its status line held until the turn is written: the 503 a turn the
    database could not take calls for (`saved` raises it) must be the answer, not a 200 whose
    stream ends in an error. Only `http.response.start` waits: the route's return, the
    response and its task group are made beside the write and the upstream request, so once
    the write lands the status, the `meta` event (which waits for the write anyway) and what
    follows go in the same step. Awaiting the write before returning the response put all of
    that after it, on the first token's path (issue #33; docs/benchmarks.md). Raised before
    anything was sent, the refusal is answered by Starlette's exception handling as any
    route's is."""

    def __init__(self, response: EventSourceResponse, saved: Callable[[], Awaitable[None]]):
        self._response = response
        self._saved = saved

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_once_saved(message: Message) -> None:
            if message["type"] == "http.response.start":
                await self._saved()
            await send(message)

        await self._response(scope, receive, send_once_saved)


def sse_response(
    batches: AsyncIterator[list[LogEvent]], *, state: AppState, reply_ids: str | None = None
) -> EventSourceResponse:
    """`reply_ids`: a message id, to number the events `<message_id>:<n>` (the one-step GET
    forms, whose reconnecting EventSource must name its reply: see `reply_event_id`)."""
    id_prefix = None if reply_ids is None else reply_id_prefix(reply_ids)
    return EventSourceResponse(
        _frames(batches, id_prefix, state.stages),
        # Our batch sources send the pings (an empty batch): no ping task per response.
        ping=0,
        headers=STREAM_HEADERS,
        # On SIGTERM sse-starlette keeps the stream open for the grace period, and
        # `drain_on_shutdown` starts the drain, so each run's final event (done, or
        # interrupted) still reaches this client.
        shutdown_grace_period=state.settings.shutdown_grace + SHUTDOWN_MARGIN,
    )
