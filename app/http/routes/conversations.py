"""Conversations: list (newest first, a page at a time), one with its messages, delete.

The caller's own, always; an admin (the JWT's admin claim) may also list and read any user's:
`GET /api/conversations?user_id=…` (403 `forbidden` for anyone else, rather than quietly
answering with their own list) and `GET /api/conversations/{id}`. Deleting is the owner's only.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

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
from app.storage.conversations import Position

DEFAULT_PAGE = 50
MAX_PAGE = 100


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
        # The readable thinking and the citations; reasoning_details stay server-side (they
        # may be encrypted, and only OpenRouter reads them).
        "reasoning": row["reasoning"],
        "annotations": json.loads(row["annotations"] or "[]"),
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
            "reasoning_tokens": row["reasoning_tokens"] or 0,
        }
        if assistant
        else None,
        "cost_usd": usd(from_picos(row["cost_picousd"])),
        "error": {"code": row["error_code"], "message": row["error_message"]}
        if row["error_code"]
        else None,
        "created_at": row["created_at"].isoformat(),
    }


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(422, "invalid_query", f"`limit` must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def _cursor(position: Position) -> str:
    """An opaque cursor: base64url of `[updated_at, id]` of a page's last conversation."""
    raw = json.dumps([position.updated_at.isoformat(), position.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _position(cursor: str) -> Position:
    try:
        updated_at, conversation_id = json.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
        position = Position(datetime.fromisoformat(updated_at), conversation_id)
        if position.updated_at.tzinfo is None or not isinstance(position.id, str):
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error):  # JSONDecodeError is a ValueError
        raise ApiError(
            422, "invalid_query", "`cursor` is not one this server gave (use a page's `next`)"
        ) from None
    return position


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
    query = request.query_params
    agent = query.get("agent") or None
    if agent is not None and agent not in state.agents:
        raise ApiError(422, "unknown_agent", f"no agent {agent!r}")
    limit = _limit(query.get("limit"))
    cursor = query.get("cursor")
    # One row more than the page: whether there is a next page, without a second query.
    rows = await state.store.conversations.list_for_user(
        user_id=user_id,
        agent=agent,
        limit=limit + 1,
        after=None if cursor is None else _position(cursor),
    )
    page, more = rows[:limit], len(rows) > limit
    next_url = None
    if more:
        last = page[-1]
        following = {"user_id": query.get("user_id"), "agent": agent, "limit": query.get("limit")}
        following = {k: v for k, v in following.items() if v is not None}
        following["cursor"] = _cursor(Position(last["updated_at"], last["id"]))
        next_url = f"{request.url.path}?{urlencode(following)}"
    return JSONResponse(
        {
            "conversations": [
                {
                    **_conversation(row),
                    "message_count": row["message_count"],
                    "total_cost_usd": usd(from_picos(row["cost_picousd"])),
                }
                for row in page
            ],
            "next": next_url,
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
