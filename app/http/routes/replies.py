"""Chat and coach turns: one-step SSE (`POST /api/chat`, `GET /api/chat/stream`), two-step
(`POST /api/chat/messages` then the `stream_url`), and stopping a reply.

Every one is the caller's: a turn goes into their conversation, and a reply of another user's
answers 404 exactly as an id that does not exist (docs/auth.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.admission.service import Key, KeyUsed
from app.core.stages import Stage, mark
from app.core.states import MessageStatus
from app.errors import ApiError
from app.http.auth.identity import Caller, identify, identify_from_query, identify_stream
from app.http.input import fingerprint, idempotency_key, json_body, path_id, query_body
from app.http.sse import STREAM_HEADERS, last_event_id, reply_event_id, sse_response
from app.http.state import AppState, app_state
from app.http.turns import Turn, chat_turn, coach_turn, edit_turn, regenerate_turn, start
from app.replies.follow import ReplySource, find_reply, live_run
from app.replies.runs import Run
from app.replies.wire import LogEvent, final_body, succeeded

# What keeps a slow `"stream": false` answer's connection alive: JSON allows whitespace before
# its value, so the body still parses.
KEEPALIVE = b" "


class TurnBuilder(Protocol):
    def __call__(
        self, state: AppState, body: dict[str, Any], *, user_id: str
    ) -> Awaitable[Turn]: ...


def stream_url(state: AppState, message_id: str, caller: Caller) -> str:
    """The reply's stream, with a stream token of its own: a browser's EventSource cannot send
    the caller's Authorization header, and their JWT should not travel in a URL."""
    token = state.auth.issue_stream_token(message_id, caller.user_id)
    return f"/api/messages/{message_id}/stream?stream_token={token}"


async def _whole_reply(source: ReplySource) -> list[LogEvent]:
    """All of a reply's events, once its final one is there."""
    events: list[LogEvent] = []
    async for batch in source.follow(0):
        events.extend(batch)
    return events


async def _final_json(state: AppState, source: ReplySource) -> Response:
    """The reply as one JSON answer: at once if it is over within NONSTREAM_KEEPALIVE_AFTER
    seconds (a 502 if it failed); else a 200 committed then, kept alive with whitespace (legal
    before a JSON value) every PING_INTERVAL, then the body, which says if the reply failed."""
    whole = asyncio.ensure_future(_whole_reply(source))
    try:
        await asyncio.wait([whole], timeout=state.settings.nonstream_keepalive_after)
    except asyncio.CancelledError:
        whole.cancel()
        raise
    if whole.done():
        events = whole.result()
        return JSONResponse(final_body(events), status_code=200 if succeeded(events) else 502)
    return StreamingResponse(
        _kept_alive(whole, interval=state.settings.ping_interval),
        media_type="application/json",
        headers=STREAM_HEADERS,
    )


async def _kept_alive(
    whole: asyncio.Future[list[LogEvent]], *, interval: float
) -> AsyncIterator[bytes]:
    try:
        yield KEEPALIVE
        while not (await asyncio.wait([whole], timeout=interval))[0]:
            yield KEEPALIVE
        yield JSONResponse(final_body(whole.result())).body
    finally:
        # Over already, unless the client left: then stop following (the run goes on).
        whole.cancel()


def _accepted(
    state: AppState, caller: Caller, *, conversation_id: str, user_message_id: str, message_id: str
) -> Response:
    return JSONResponse(
        {
            "conversation_id": conversation_id,
            "user_message_id": user_message_id,
            "message_id": message_id,
            "stream_url": stream_url(state, message_id, caller),
        },
        status_code=202,
    )


async def _own_reply(state: AppState, *, message_id: str, user_id: str, agent: str) -> ReplySource:
    """The caller's own reply of `agent`, wherever it is followed from; else 404, the same for
    another user's reply as for none."""
    row = await state.store.replies.get(message_id=message_id, user_id=user_id)
    source = (
        await find_reply(
            message_id,
            user_id=user_id,
            runs=state.runs,
            store=state.store,
            settings=state.settings,
            streams=state.streams,
            owner_checked=True,
        )
        if row is not None and row["agent"] == agent
        else None
    )
    if source is None:
        raise ApiError(404, "message_not_found", f"no assistant message {message_id!r}")
    return source


def _resumed(
    state: AppState, source: ReplySource, after: int, *, reply_ids: str | None = None
) -> Response:
    if not source.has_events_after(after):
        # 204 is what tells a browser's EventSource to stop reconnecting.
        return Response(status_code=204)
    return sse_response(source.follow(after), state=state, reply_ids=reply_ids)


async def _posted_turn(
    request: Request, state: AppState, build: TurnBuilder, user_id: str, *, bodiless: bool = False
) -> tuple[Turn, Run | KeyUsed]:
    """The turn a POST asks for, and its new run; or, if its `Idempotency-Key` named a turn
    already (with the same request), that turn's ids. `bodiless`: the POST may come without a
    body."""
    body = await json_body(request, optional=bodiless)
    key = idempotency_key(request)
    turn = await build(state, body, user_id=user_id)
    mark(Stage.VALIDATED)
    sent = None if key is None else Key(key=key, fingerprint=fingerprint(request, body))
    return turn, await start(state, turn, key=sent)


def one_step_post(build: TurnBuilder, *, agent: str) -> Callable[[Request], Awaitable[Response]]:
    """`POST /api/chat` and `/api/coach`: SSE, or JSON with `"stream": false`. A retry with
    the `Idempotency-Key` of a turn gets that turn's reply: its stream from the start or after
    `Last-Event-ID`, or its JSON."""

    async def endpoint(request: Request) -> Response:
        """
        ---
        requestBody:
          required: true
          content:
            application/json:
              schema: {$ref: "#/components/schemas/TurnBody"}
        parameters:
          - {name: Idempotency-Key, in: header, schema: {type: string}}
        responses:
          200:
            description: 'the reply: SSE events, or with `"stream": false` one JSON answer'
            content:
              text/event-stream: {}
              application/json: {schema: {type: object}}
          502:
            description: '`"stream": false`: the reply failed (its final event''s fields)'
            content: {application/json: {schema: {type: object}}}
          402: budget_exceeded
          404: conversation_not_found upload_not_found
          409: price_unknown idempotency_key_reused
          413: message_too_long context_too_long question_too_long
          422: >-
            message_required coach_input_required invalid_field model_not_allowed unknown_model
            reasoning_not_supported message_too_long_for_model
            model_cannot_read_images model_cannot_read_files
          429: rate_limited
          503: server_busy storage_error
          400: invalid_last_event_id
        x-schemas:
          TurnBody:
            type: object
            properties:
              message: {type: string, description: "chat: the user's message"}
              context: {type: string, description: "coach: what to coach on"}
              question: {type: string, description: "coach: the question"}
              conversation_id: {type: [string, "null"]}
              attachments:
                type: array
                maxItems: 10
                items: {type: string}
                description: "ids of the caller's uploads (POST /api/uploads)"
              stream: {type: boolean, default: true, description: "false: one JSON answer"}
              model: {type: string, description: "one of GET /api/agents/{agent}/models"}
              reasoning: {type: object, properties: {effort: {type: string}}}
        """
        state = app_state(request)
        caller = await identify(request)
        mark(Stage.IDENTIFIED)
        turn, run = await _posted_turn(request, state, build, caller.user_id)
        if isinstance(run, Run):
            return _resumed(state, run, 0) if turn.stream else await _final_json(state, run)
        source = await _own_reply(
            state, message_id=run.message_id, user_id=caller.user_id, agent=agent
        )
        if turn.stream:
            return _resumed(state, source, last_event_id(request))
        return await _final_json(state, source)

    return endpoint


def one_step_get(build: TurnBuilder, *, agent: str) -> Callable[[Request], Awaitable[Response]]:
    """`GET /api/chat/stream` and `/api/coach/stream`, for a browser's `EventSource`.

    An EventSource reconnects to the same URL whenever a response ends, the message in its
    query string included: its events are numbered `<message_id>:<n>`, so the `Last-Event-ID`
    it reconnects with names the reply to resume (from the live run, or from the database
    after a restart), never a new turn; `204` once it has everything stops it.
    """

    async def endpoint(request: Request) -> Response:
        """
        ---
        parameters:
          - {name: message, in: query, schema: {type: string}}
          - {name: context, in: query, schema: {type: string}}
          - {name: question, in: query, schema: {type: string}}
          - {name: conversation_id, in: query, schema: {type: string}}
          - {name: model, in: query, schema: {type: string}}
          - {name: attachments, in: query, schema: {type: string}, description: "upload ids, a,b"}
          - {name: reasoning, in: query, schema: {type: string}, description: an effort}
          - {name: access_token, in: query, schema: {type: string}}
          - {name: Last-Event-ID, in: header, schema: {type: string}}
        responses:
          200:
            description: the reply's events
            content: {text/event-stream: {}}
          204: the client has every event of the reply
          400: invalid_last_event_id
          404: message_not_found
          402: budget_exceeded
          404: conversation_not_found upload_not_found
          409: price_unknown idempotency_key_reused
          413: message_too_long context_too_long question_too_long
          422: >-
            message_required coach_input_required invalid_field model_not_allowed unknown_model
            reasoning_not_supported message_too_long_for_model
            model_cannot_read_images model_cannot_read_files
          429: rate_limited
          503: server_busy storage_error
        """
        state = app_state(request)
        caller = await identify_from_query(request)
        resume = reply_event_id(request)
        if resume is not None:
            message_id, after = resume
            source = await _own_reply(
                state, message_id=message_id, user_id=caller.user_id, agent=agent
            )
            return _resumed(state, source, after, reply_ids=message_id)
        mark(Stage.IDENTIFIED)
        turn = await build(state, query_body(request), user_id=caller.user_id)
        mark(Stage.VALIDATED)
        run = await start(state, turn)
        assert isinstance(run, Run)  # no key: always a new turn
        return _resumed(state, run, 0, reply_ids=run.message_id)

    return endpoint


def two_step(build: TurnBuilder) -> Callable[[Request], Awaitable[Response]]:
    """`POST /api/chat/messages` and `/api/coach/messages`: `202` with the reply's ids; the
    same `202` again for a retry with the turn's `Idempotency-Key`."""

    async def endpoint(request: Request) -> Response:
        """
        ---
        requestBody:
          required: true
          content:
            application/json:
              schema: {$ref: "#/components/schemas/TurnBody"}
        parameters:
          - {name: Idempotency-Key, in: header, schema: {type: string}}
        responses:
          202:
            description: the reply's ids and its `stream_url`
            content:
              application/json:
                schema:
                  type: object
                  required: [conversation_id, user_message_id, message_id, stream_url]
          402: budget_exceeded
          404: conversation_not_found upload_not_found
          409: price_unknown idempotency_key_reused
          413: message_too_long context_too_long question_too_long
          422: >-
            message_required coach_input_required invalid_field model_not_allowed unknown_model
            reasoning_not_supported message_too_long_for_model
            model_cannot_read_images model_cannot_read_files
          429: rate_limited
          503: server_busy storage_error
        """
        return await _accept(request, build)

    return endpoint


async def _accept(request: Request, build: TurnBuilder, *, bodiless: bool = False) -> Response:
    state = app_state(request)
    caller = await identify(request)
    mark(Stage.IDENTIFIED)
    _, run = await _posted_turn(request, state, build, caller.user_id, bodiless=bodiless)
    if isinstance(run, Run) and state.streams is not None:
        # The ids given out are there to find (`start` answered 503 unless the turn was saved),
        # and in its Redis Stream (a round trip, alongside the save), so the stream_url is
        # served live by whichever process the client reaches, not from checkpoints.
        await state.streams.outbox.flushed()
    ids = run.request if isinstance(run, Run) else run
    return _accepted(
        state,
        caller,
        conversation_id=ids.conversation_id,
        user_message_id=ids.user_message_id,
        message_id=ids.message_id,
    )


async def regenerate(request: Request) -> Response:
    """`POST /api/messages/{id}/regenerate` [`{"model", "reasoning"}`]: another reply to the
    user message reply `id` answered, beside it (two-step, as `POST /api/chat/messages`), with
    another model if the body names one; the branch shown is the new reply's.
    ---
    requestBody:
      required: false
      content:
        application/json:
          schema:
            type: object
            properties:
              model: {type: string, description: "one of GET /api/agents/{agent}/models"}
              reasoning: {type: object, properties: {effort: {type: string}}}
    parameters:
      - {name: Idempotency-Key, in: header, schema: {type: string}}
    responses:
      202:
        description: the new reply's ids and its `stream_url`
        content: {application/json: {schema: {type: object}}}
      404: message_not_found upload_not_found
      422: >-
        invalid_field model_not_allowed unknown_model reasoning_not_supported
        message_too_long_for_model model_cannot_read_images model_cannot_read_files
      402: budget_exceeded
      409: price_unknown idempotency_key_reused
      429: rate_limited
      503: server_busy storage_error
    """

    async def build(state: AppState, body: dict[str, Any], *, user_id: str) -> Turn:
        # Read after the caller is identified: a bad token answers 401 whatever the id.
        message_id = path_id(request, "message_id")
        return await regenerate_turn(state, message_id, body, user_id=user_id)

    return await _accept(request, build, bodiless=True)


async def edit(request: Request) -> Response:
    """`POST /api/messages/{id}/edit` `{"message"}`: user message `id` said otherwise, a new
    user message beside it with its own reply (two-step); what followed the old one stays on
    its branch.
    ---
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [message]
            properties:
              message: {type: string}
              attachments:
                type: array
                items: {type: string}
                description: "upload ids; absent: the edited message's"
              model: {type: string, description: "one of GET /api/agents/{agent}/models"}
              reasoning: {type: object, properties: {effort: {type: string}}}
    parameters:
      - {name: Idempotency-Key, in: header, schema: {type: string}}
    responses:
      202:
        description: the new reply's ids and its `stream_url`
        content: {application/json: {schema: {type: object}}}
      404: message_not_found upload_not_found
      413: message_too_long
      422: >-
        message_required invalid_field model_not_allowed unknown_model reasoning_not_supported
        message_too_long_for_model model_cannot_read_images model_cannot_read_files
      402: budget_exceeded
      409: price_unknown idempotency_key_reused
      429: rate_limited
      503: server_busy storage_error
    """

    async def build(state: AppState, body: dict[str, Any], *, user_id: str) -> Turn:
        message_id = path_id(request, "message_id")
        return await edit_turn(state, message_id, body, user_id=user_id)

    return await _accept(request, build)


async def reply_stream(request: Request) -> Response:
    """
    ---
    parameters:
      - {name: stream_token, in: query, schema: {type: string}}
      - {name: access_token, in: query, schema: {type: string}}
      - {name: last_event_id, in: query, schema: {type: string}}
      - {name: Last-Event-ID, in: header, schema: {type: string}}
    responses:
      200:
        description: the reply's events, from the start or after `Last-Event-ID`
        content: {text/event-stream: {}}
      204: the client has every event of the reply
      400: invalid_last_event_id
      404: message_not_found
      422: invalid_field
    """
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
        streams=state.streams,
    )
    if source is None:
        raise ApiError(404, "message_not_found", f"no assistant message {message_id!r}")
    return _resumed(state, source, after)


async def stop_reply(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: the reply had ended already; its status
        content: {application/json: {schema: {type: object}}}
      202:
        description: the reply is stopped; its status once it has ended
        content: {application/json: {schema: {type: object}}}
      404: message_not_found
      422: invalid_field
    """
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
    if row["status"] != MessageStatus.STREAMING:
        # Already over: say how it ended, change nothing.
        return JSONResponse({"message_id": message_id, "status": row["status"]}, status_code=200)
    # Another process generates it: have it stopped there, and answer once it has.
    status = await state.signals.stop_elsewhere(message_id, user_id=caller.user_id)
    return JSONResponse({"message_id": message_id, "status": status}, status_code=202)


routes = [
    Route("/api/chat", one_step_post(chat_turn, agent="chat"), methods=["POST"]),
    Route("/api/chat/stream", one_step_get(chat_turn, agent="chat"), methods=["GET"]),
    Route("/api/chat/messages", two_step(chat_turn), methods=["POST"]),
    Route("/api/coach", one_step_post(coach_turn, agent="coach"), methods=["POST"]),
    Route("/api/coach/stream", one_step_get(coach_turn, agent="coach"), methods=["GET"]),
    Route("/api/coach/messages", two_step(coach_turn), methods=["POST"]),
    Route("/api/messages/{message_id}/stream", reply_stream, methods=["GET"]),
    Route("/api/messages/{message_id}/stop", stop_reply, methods=["POST"]),
    Route("/api/messages/{message_id}/regenerate", regenerate, methods=["POST"]),
    Route("/api/messages/{message_id}/edit", edit, methods=["POST"]),
]
