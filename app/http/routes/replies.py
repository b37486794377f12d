"""Chat and coach turns: one-step SSE (`POST /api/chat`, `GET /api/chat/stream`), two-step
(`POST /api/chat/messages` then the `stream_url`), and stopping a reply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import ApiError
from app.http.input import json_body, path_id, query_body
from app.http.sse import last_event_id, sse_response
from app.replies.follow import find_reply
from app.replies.runs import Run
from app.replies.states import MessageStatus
from app.replies.turns import Turn, chat_turn, coach_turn, start_run
from app.state import AppState, app_state

TurnBuilder = Callable[[AppState, dict[str, Any]], Awaitable[Turn]]


def stream_url(message_id: str) -> str:
    return f"/api/messages/{message_id}/stream"


async def _answer(state: AppState, run: Run, *, stream: bool) -> Response:
    if stream:
        return sse_response(run.follow(0), state=state)
    await run.wait()
    events = run.log.events
    body = {**events[0].payload, **events[-1].payload, "content": run.content}
    return JSONResponse(body, status_code=200 if events[-1].event == "done" else 502)


def one_step(build: TurnBuilder, *, from_query: bool) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state = app_state(request)
        body = query_body(request) if from_query else await json_body(request)
        turn = await build(state, body)
        run = start_run(state, turn)
        return await _answer(state, run, stream=turn.stream)

    return endpoint


def two_step(build: TurnBuilder) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state = app_state(request)
        run = start_run(state, await build(state, await json_body(request)))
        # The ids given out must be there to find (the stream's own answer would say
        # storage_error; this one says so at once).
        if not await run.turn_saved():
            raise ApiError(503, "storage_error", "the conversation could not be saved")
        if state.streams is not None:
            # And in its Redis Stream (a round trip, alongside the save), so the stream_url
            # is served live by whichever process the client reaches, not from checkpoints.
            await state.streams.outbox.flushed()
        meta = run.log.events[0].payload
        return JSONResponse(
            {
                "conversation_id": meta["conversation_id"],
                "user_message_id": meta["user_message_id"],
                "message_id": run.message_id,
                "stream_url": stream_url(run.message_id),
            },
            status_code=202,
        )

    return endpoint


async def reply_stream(request: Request) -> Response:
    state = app_state(request)
    message_id = path_id(request, "message_id")
    after = last_event_id(request)
    source = await find_reply(
        message_id,
        runs=state.runs,
        store=state.store,
        settings=state.settings,
        streams=state.streams,
    )
    if source is None:
        raise ApiError(404, "message_not_found", f"no assistant message {message_id!r}")
    if not source.has_events_after(after):
        # 204 is what tells a browser's EventSource to stop reconnecting.
        return Response(status_code=204)
    return sse_response(source.follow(after), state=state)


async def stop_reply(request: Request) -> Response:
    state = app_state(request)
    message_id = path_id(request, "message_id")
    run = state.runs.get(message_id)
    if run is not None:
        run.cancel(MessageStatus.STOPPED)
        await run.wait()
        return JSONResponse({"message_id": message_id, "status": run.status}, status_code=202)
    row = await state.store.reply(message_id=message_id)
    if row is None:
        raise ApiError(404, "message_not_found", f"no assistant message {message_id!r}")
    if row["status"] != MessageStatus.STREAMING:
        # Already over: say how it ended, change nothing.
        return JSONResponse({"message_id": message_id, "status": row["status"]}, status_code=200)
    # Another process generates it: have it stopped there, and answer once it has.
    status = await state.signals.stop_elsewhere(message_id)
    return JSONResponse({"message_id": message_id, "status": status}, status_code=202)


routes = [
    Route("/api/chat", one_step(chat_turn, from_query=False), methods=["POST"]),
    Route("/api/chat/stream", one_step(chat_turn, from_query=True), methods=["GET"]),
    Route("/api/chat/messages", two_step(chat_turn), methods=["POST"]),
    Route("/api/coach", one_step(coach_turn, from_query=False), methods=["POST"]),
    Route("/api/coach/stream", one_step(coach_turn, from_query=True), methods=["GET"]),
    Route("/api/coach/messages", two_step(coach_turn), methods=["POST"]),
    Route("/api/messages/{message_id}/stream", reply_stream, methods=["GET"]),
    Route("/api/messages/{message_id}/stop", stop_reply, methods=["POST"]),
]
