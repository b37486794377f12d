"""Conversations: list (newest first), one with its messages, delete.

The caller's own, always; an admin (the JWT's admin claim) may also list and read any user's:
`GET /api/conversations?user_id=…` (403 `forbidden` for anyone else, rather than quietly
answering with their own list) and `GET /api/conversations/{id}`. Deleting is the owner's only.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.billing.money import from_picos, usd
from app.errors import ApiError
from app.http.auth.identity import identify
from app.http.auth.jwt_tokens import MAX_USER_ID_CHARS, user_id_from
from app.http.input import path_id
from app.replies.states import MessageStatus
from app.state import app_state


def _conversation(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "agent": row["agent"],
        "subject_conversation_id": row["subject_conversation_id"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _message(row: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
    assistant = row["role"] == "assistant"
    return {
        "id": row["id"],
        "role": row["role"],
        "content": row["content"],
        "status": row["status"],
        "agent": row["agent"],
        "model": row["model"] or row["requested_model"],
        "requested_model": row["requested_model"],
        "temperature": row["temperature"],
        "finish_reason": row["finish_reason"],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if assistant
        else None,
        "cost_usd": usd(from_picos(row["cost_picousd"])),
        "error": {"code": row["error_code"], "message": row["error_message"]}
        if row["error_code"]
        else None,
        "created_at": row["created_at"].isoformat(),
    }


async def list_conversations(request: Request) -> Response:
    state = app_state(request)
    caller = await identify(request)
    user_id = request.query_params.get("user_id") or caller.user_id
    if user_id != caller.user_id and not caller.is_admin:
        raise ApiError(403, "forbidden", "only an admin may list another user's conversations")
    if user_id_from(user_id) is None:
        raise ApiError(
            422, "invalid_field", f"`user_id` must be 1 to {MAX_USER_ID_CHARS} printable characters"
        )
    agent = request.query_params.get("agent") or None
    if agent is not None and agent not in state.agents:
        raise ApiError(422, "unknown_agent", f"no agent {agent!r}")
    rows = await state.store.conversations.list_for_user(user_id=user_id, agent=agent)
    return JSONResponse(
        {
            "conversations": [
                {
                    **_conversation(row),
                    "message_count": row["message_count"],
                    "total_cost_usd": usd(from_picos(row["cost_picousd"])),
                }
                for row in rows
            ]
        }
    )


async def get_conversation(request: Request) -> Response:
    state = app_state(request)
    caller = await identify(request)
    conversation_id = path_id(request, "conversation_id")
    row = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=None if caller.is_admin else caller.user_id
    )
    if row is None:
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    messages = await state.store.replies.in_conversation(conversation_id=conversation_id)
    costs = [m["cost_picousd"] for m in messages if m["cost_picousd"] is not None]
    return JSONResponse(
        {
            **_conversation(row),
            "total_cost_usd": usd(from_picos(sum(costs))) if costs else None,
            "messages": [_message(m) for m in messages],
        }
    )


async def delete_conversation(request: Request) -> Response:
    state = app_state(request)
    caller = await identify(request)
    conversation_id = path_id(request, "conversation_id")
    # Only the caller's own runs: another user's conversation id must change nothing, and a
    # run's conversation is its user's, so no run matches an id that is not theirs.
    for run in list(state.runs.live.values()):
        if run.request.conversation_id == conversation_id and run.request.user_id == caller.user_id:
            run.cancel(MessageStatus.STOPPED)
            await run.wait()
    deleted = await state.store.conversations.delete(
        conversation_id=conversation_id, user_id=caller.user_id
    )
    if not deleted:
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    return Response(status_code=204)


routes = [
    Route("/api/conversations", list_conversations, methods=["GET"]),
    Route("/api/conversations/{conversation_id}", get_conversation, methods=["GET"]),
    Route("/api/conversations/{conversation_id}", delete_conversation, methods=["DELETE"]),
]
