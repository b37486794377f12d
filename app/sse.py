"""Server-Sent Events responses for reply streams, and the `Last-Event-ID` a client resumes from."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse
from starlette.requests import Request

from app.errors import ApiError
from app.events import LogEvent
from app.state import AppState

# What keeps Heroku-like routers and nginx from holding the stream back.
STREAM_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
# Seconds past SHUTDOWN_GRACE for a cancelled run's final write and event to get out.
SHUTDOWN_MARGIN = 3.0
RETRY_FIELD = b"retry: 1000\n"


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


async def _frames(events: AsyncIterator[LogEvent]) -> AsyncIterator[bytes]:
    async for event in events:
        # A browser's EventSource waits ~3 s by default before reconnecting; a dropped reply
        # should resume sooner. It keeps the `retry:` it was given across reconnections.
        yield RETRY_FIELD + event.frame if event.id == 1 else event.frame


def sse_response(events: AsyncIterator[LogEvent], *, state: AppState) -> EventSourceResponse:
    shutdown = anyio.Event()

    async def start_drain_on_shutdown() -> None:
        await shutdown.wait()
        state.runs.begin_drain()

    return EventSourceResponse(
        _frames(events),
        ping=state.settings.ping_interval,
        headers=STREAM_HEADERS,
        # On SIGTERM sse-starlette sets `shutdown` and keeps the stream open for the grace
        # period, so each run's final event (done, or interrupted) still reaches this client.
        shutdown_event=shutdown,
        shutdown_grace_period=state.settings.shutdown_grace + SHUTDOWN_MARGIN,
        data_sender_callable=start_drain_on_shutdown,
    )
