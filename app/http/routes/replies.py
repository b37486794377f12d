"""Chat and coach turns: one-step SSE (`POST /api/chat`, `GET /api/chat/stream`), two-step
(`POST /api/chat/messages` then the `stream_url`), and stopping a reply.

Every one is the caller's: a turn goes into their conversation, and a reply of another user's
answers 404 exactly as an id that does not exist (docs/auth.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import ApiError
from app.http.auth.identity import Caller, identify, identify_from_query, identify_stream
from app.http.input import json_body, path_id, query_body
from app.http.sse import last_event_id, sse_response
from app.replies.follow import find_reply, live_run
from app.replies.runs import Run
from app.replies.states import MessageStatus
from app.replies.turns import Turn, chat_turn, coach_turn, start_run
from app.state import AppState, app_state


class TurnBuilder(Protocol):
    def __call__(
        self, state: AppState, body: dict[str, Any], *, user_id: str
    ) -> Awaitable[Turn]: ...


def stream_url(state: AppState, message_id: str, caller: Caller) -> str:
    """The reply's stream, with a stream token of its own: a browser's EventSource cannot send
    the caller's Authorization header, and their JWT should not travel in a URL."""
    token = state.auth.issue_stream_token(message_id, caller.user_id)
    return f"/api/messages/{message_id}/stream?stream_token={token}"


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
        caller = await (identify_from_query if from_query else identify)(request)
        body = query_body(request) if from_query else await json_body(request)
        turn = await build(state, body, user_id=caller.user_id)
        run = start_run(state, turn)
        return await _answer(state, run, stream=turn.stream)

    return endpoint


def two_step(build: TurnBuilder) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state = app_state(request)
        caller = await identify(request)
        turn = await build(state, await json_body(request), user_id=caller.user_id)
        run = start_run(state, turn)
        # The ids given out must be there to find (the stream's own answer would say
        # storage_error; this one says so at once).
        if not await run.turn_saved():
            raise ApiError(503, "storage_error", "the conversation could not be saved")
        meta = run.log.events[0].payload
        return JSONResponse(
            {
                "conversation_id": meta["conversation_id"],
                "user_message_id": meta["user_message_id"],
                "message_id": run.message_id,
                "stream_url": stream_url(state, run.message_id, caller),
            },
            status_code=202,
        )

    return endpoint


async def reply_stream(request: Request) -> Response:
    state = app_state(request)
    caller = await identify_stream(request, request.path_params["message_id"])
    message_id = path_id(request, "message_id")
    after = last_event_id(request)
    source = await find_reply(
        message_id,
        user_id=caller.user_id,
        runs=state.runs,
        store=state.store,
        settings=state.settings,
    )
    if source is None:
        raise ApiError(404, "message_not_found", f"no assistant message {message_id!r}")
    if not source.has_events_after(after):
        # 204 is what tells a browser's EventSource to stop reconnecting.
        return Response(status_code=204)
    return sse_response(source.follow(after), state=state)


async def stop_reply(request: Request) -> Response:
    state = app_state(request)
    caller = await identify(request)
    message_id = path_id(request, "message_id")
    run = live_run(state.runs, message_id=message_id, user_id=caller.user_id)
    if run is not None:
        run.cancel(MessageStatus.STOPPED)
        await run.wait()
        return JSONResponse({"message_id": message_id, "status": run.status}, status_code=202)
    row = await state.store.replies.get(message_id=message_id, user_id=caller.user_id)
    if row is None:
        raise ApiError(404, "message_not_found", f"no assistant message {message_id!r}")
    # Already over (or owned by another process): say how it ended, change nothing.
    return JSONResponse({"message_id": message_id, "status": row["status"]}, status_code=200)


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
