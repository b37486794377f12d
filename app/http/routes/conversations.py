"""Conversations: list (newest first, a page at a time), one with the messages of the branch it
shows, rename, delete; and switching the branch a conversation shows."""

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
from app.http.input import json_body, path_id
from app.replies.states import MessageStatus
from app.replies.titles import MAX_TITLE
from app.state import AppState, app_state
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
    siblings = row["sibling_ids"]
    return {
        "id": row["id"],
        "parent_id": row["parent_id"],
        # Its place among the messages with its parent (other replies to one question, other
        # versions of one question): `POST /api/messages/{id}/activate` shows another.
        "siblings": len(siblings),
        "sibling_index": siblings.index(row["id"]) + 1,
        "sibling_ids": siblings,
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
    query = request.query_params
    agent = query.get("agent") or None
    if agent is not None and agent not in state.agents:
        raise ApiError(422, "unknown_agent", f"no agent {agent!r}")
    limit = _limit(query.get("limit"))
    cursor = query.get("cursor")
    # One row more than the page: whether there is a next page, without a second query.
    rows = await state.store.conversations.list_for_user(
        user_id=state.settings.dev_user_id,
        agent=agent,
        limit=limit + 1,
        after=None if cursor is None else _position(cursor),
    )
    page, more = rows[:limit], len(rows) > limit
    next_url = None
    if more:
        last = page[-1]
        following = {"agent": agent, "limit": query.get("limit")}
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


async def _with_messages(state: AppState, row: dict[str, Any]) -> dict[str, Any]:
    """A conversation with the messages of the branch it shows, and its total cost: every
    branch's, its title's and its coach reviews' (`ledger.conversation_cost`)."""
    messages = await state.store.replies.in_conversation(
        conversation_id=row["id"], leaf_id=row["active_leaf_id"]
    )
    total = await state.store.conversations.total_cost(conversation_id=row["id"])
    return {
        **_conversation(row),
        "total_cost_usd": usd(from_picos(total)),
        "messages": [_message(m) for m in messages],
    }


async def get_conversation(request: Request) -> Response:
    state = app_state(request)
    conversation_id = path_id(request, "conversation_id")
    row = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=state.settings.dev_user_id
    )
    if row is None:
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    return JSONResponse(await _with_messages(state, row))


async def rename_conversation(request: Request) -> Response:
    """`PATCH /api/conversations/{id}` `{"title"}`: the user's own title, kept from then on."""
    state = app_state(request)
    caller = await identify(request)
    conversation_id = path_id(request, "conversation_id")
    body = await json_body(request)
    title = body.get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE:
        raise ApiError(422, "invalid_field", f"`title` must be text of 1 to {MAX_TITLE} characters")
    renamed = await state.store.conversations.rename(
        conversation_id=conversation_id, user_id=caller.user_id, title=" ".join(title.split())
    )
    if not renamed:
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    row = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=caller.user_id
    )
    assert row is not None
    return JSONResponse(_conversation(row))


async def activate_message(request: Request) -> Response:
    """`POST /api/messages/{id}/activate`: the conversation shows the branch through message
    `id` (its latest, see `Replies.show`); answers with the conversation as `GET` does."""
    state = app_state(request)
    caller = await identify(request)
    message_id = path_id(request, "message_id")
    message = await state.store.replies.message(message_id=message_id)
    row = (
        await state.store.conversations.get(
            conversation_id=message["conversation_id"], user_id=caller.user_id
        )
        if message is not None
        else None
    )
    if row is None:
        raise ApiError(404, "message_not_found", f"no message {message_id!r}")
    await state.store.replies.show(conversation_id=row["id"], message_id=message_id)
    row = await state.store.conversations.get(conversation_id=row["id"], user_id=caller.user_id)
    assert row is not None
    return JSONResponse(await _with_messages(state, row))


async def delete_conversation(request: Request) -> Response:
    state = app_state(request)
    conversation_id = path_id(request, "conversation_id")
    for run in list(state.runs.live.values()):
        if run.request.conversation_id == conversation_id:
            run.cancel(MessageStatus.STOPPED)
            await run.wait()
    deleted = await state.store.conversations.delete(
        conversation_id=conversation_id, user_id=state.settings.dev_user_id
    )
    if not deleted:
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    return Response(status_code=204)


routes = [
    Route("/api/conversations", list_conversations, methods=["GET"]),
    Route("/api/conversations/{conversation_id}", get_conversation, methods=["GET"]),
    Route("/api/conversations/{conversation_id}", rename_conversation, methods=["PATCH"]),
    Route("/api/conversations/{conversation_id}", delete_conversation, methods=["DELETE"]),
    Route("/api/messages/{message_id}/activate", activate_message, methods=["POST"]),
]
