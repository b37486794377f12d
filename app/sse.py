"""Server-Sent Events responses for reply streams, and the `Last-Event-ID` a client resumes from."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.requests import Request

from app.errors import ApiError
from app.events import LogEvent

# What keeps Heroku-like routers and nginx from holding the stream back.
STREAM_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


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
        yield event.frame


def sse_response(events: AsyncIterator[LogEvent], *, ping_interval: float) -> EventSourceResponse:
    return EventSourceResponse(_frames(events), ping=ping_interval, headers=STREAM_HEADERS)
