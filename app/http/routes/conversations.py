"""Conversations: list (newest first, a page at a time) or search, one with the messages of the
branch it shows, export, rename, delete; and switching the branch a conversation shows.

The caller's own, always; an admin (the JWT's admin claim) may also list and read any user's:
`GET /api/conversations?user_id=…` (403 `forbidden` for anyone else, rather than quietly
answering with their own list) and `GET /api/conversations/{id}`. Renaming, switching branches,
exporting and deleting are the owner's only.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.money import from_picos, usd
from app.core.states import MessageStatus
from app.errors import ApiError
from app.http.auth.identity import identify
from app.http.auth.jwt_tokens import MAX_USER_ID_CHARS, user_id_from
from app.http.input import json_body, path_id, query_body
from app.http.state import AppState, app_state
from app.replies.titles import MAX_TITLE
from app.storage.conversations import Position

DEFAULT_PAGE = 50
MAX_PAGE = 100
MAX_SEARCH_CHARS = 500
EXPORT_TYPES = {"markdown": "text/markdown; charset=utf-8", "json": "application/json"}
EXPORT_SUFFIXES = {"markdown": "md", "json": "json"}
ROLE_HEADINGS = {"user": "You", "assistant": "Assistant"}


def _conversation(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        # False while the title is the question's first words (the titler's or the user's
        # comes later): a page reads the list again after a complete reply until it is true.
        "titled": bool(row["titled"]),
        "agent": row["agent"],
        # Its last turn's model: the next turn's unless that one names another (null: the
        # agent's default).
        "model": row["model"],
        "subject_conversation_id": row["subject_conversation_id"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _attachment(upload: dict[str, Any]) -> dict[str, Any]:
    return {k: upload[k] for k in ("id", "type", "name", "size", "width", "height", "pages")}


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
        # The uploads a user message carries (app/storage/uploads.py): [] when none.
        "attachments": [_attachment(a) for a in row["attachments"]],
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
        # {"sent", "left_out"}: earlier messages were left out to fit the model's window.
        "history": None if row["history"] is None else json.loads(row["history"]),
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "reasoning_tokens": row["reasoning_tokens"] or 0,
        }
        if assistant
        else None,
        "cost_usd": usd(from_picos(row["cost_picousd"])),
        "cache_saved_usd": usd(from_picos(row["cache_saved_picousd"])) if assistant else None,
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
    # JSONDecodeError is a ValueError; RecursionError: nesting deeper than the decoder's stack.
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise ApiError(
            422, "invalid_query", "`cursor` is not one this server gave (use a page's `next`)"
        ) from None
    return position


def _agent(request: Request) -> str | None:
    agent = request.query_params.get("agent") or None
    if agent is not None and agent not in app_state(request).agents:
        raise ApiError(422, "unknown_agent", f"no agent {agent!r}")
    return agent


async def list_conversations(request: Request) -> Response:
    """
    ---
    parameters:
      - {name: agent, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
      - {name: cursor, in: query, schema: {type: string}}
      - {name: q, in: query, schema: {type: string}, description: full-text search}
      - {name: user_id, in: query, schema: {type: string}, description: admins only}
    responses:
      200:
        description: 'a page of conversations: `{"conversations", "next"}`'
        content: {application/json: {schema: {type: object, required: [conversations, next]}}}
      403: forbidden
      422: invalid_query unknown_agent invalid_field
    """
    if "q" in request.query_params:
        return await search_conversations(request)
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
    agent = _agent(request)
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


async def search_conversations(request: Request) -> Response:
    """`?q=`: the caller's conversations whose messages match, best first, each once with its
    best-matching message and a snippet of it (`app/storage/search.py`). The best `limit`, and
    no further page (`next` is null): a search worth paging through is one to narrow."""
    caller = await identify(request)
    query = query_body(request)  # NUL and lone surrogates: `invalid_field`, as in any input
    text = query["q"].strip()
    if not text or len(text) > MAX_SEARCH_CHARS:
        raise ApiError(
            422, "invalid_query", f"`q` must be 1 to {MAX_SEARCH_CHARS} characters, not blank"
        )
    if "cursor" in query:
        raise ApiError(422, "invalid_query", "a search has no pages: `cursor` goes without `q`")
    rows = await app_state(request).store.search.find(
        user_id=caller.user_id,
        text=text,
        limit=_limit(query.get("limit")),
        agent=_agent(request),
    )
    return JSONResponse(
        {
            "conversations": [
                {
                    "id": row["conversation_id"],
                    "title": row["title"],
                    "agent": row["agent"],
                    "updated_at": row["updated_at"].isoformat(),
                    # Plain text and matches alternating, plain first: never markup.
                    "snippet": row["snippet"],
                    "message_id": row["message_id"],
                }
                for row in rows
            ],
            "next": None,
        }
    )


async def _with_messages(state: AppState, row: dict[str, Any]) -> dict[str, Any]:
    """A conversation with the messages of the branch it shows, and its total cost: every
    branch's, its title's and its coach reviews' (`ledger.conversation_cost`)."""
    messages = await state.store.replies.in_conversation(
        conversation_id=row["id"], leaf_id=row["active_leaf_id"]
    )
    total = await state.store.conversations.total_cost(conversation_id=row["id"])
    saved = await state.store.conversations.cache_saved(conversation_id=row["id"])
    return {
        **_conversation(row),
        "total_cost_usd": usd(from_picos(total)),
        # What prompt caching saved on the same generations (docs/caching.md).
        "total_cache_saved_usd": usd(from_picos(saved)),
        "messages": [_message(m) for m in messages],
    }


async def get_conversation(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: the conversation and the messages of the branch it shows
        content: {application/json: {schema: {type: object}}}
      404: conversation_not_found
      422: invalid_field
    """
    state = app_state(request)
    caller = await identify(request)
    conversation_id = path_id(request, "conversation_id")
    row = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=None if caller.is_admin else caller.user_id
    )
    if row is None:
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    return JSONResponse(await _with_messages(state, row))


async def rename_conversation(request: Request) -> Response:
    """`PATCH /api/conversations/{id}` `{"title"}`: the user's own title, kept from then on.
    ---
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object, required: [title], properties: {title: {type: string}}}
    responses:
      200:
        description: the conversation, renamed
        content: {application/json: {schema: {type: object}}}
      404: conversation_not_found
      422: invalid_field
    """
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
    `id` (its latest, see `Replies.show`); answers with the conversation as `GET` does.
    ---
    responses:
      200:
        description: the conversation, showing the branch through the message
        content: {application/json: {schema: {type: object}}}
      404: message_not_found
      422: invalid_field
    """
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


def _exact_usd(picos: int | None) -> str | None:
    """A cost as an exact decimal string ("0.000123"): an export is a record, not a float."""
    amount = from_picos(picos)
    return None if amount is None else format(amount.normalize(), "f")


def _export_message(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "role": row["role"],
        "content": row["content"],
        "attachments": [_attachment(a) for a in row["attachments"]],
        "status": row["status"],
        "model": (row["model"] or row["requested_model"]) if row["role"] == "assistant" else None,
        "created_at": row["created_at"].isoformat(),
        "cost_usd": _exact_usd(row["cost_picousd"]),
    }


def _export_markdown(export: dict[str, Any]) -> str:
    def when(iso: str) -> str:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")

    title = " ".join(export["title"].split()) or "Conversation"
    total = export["total_cost_usd"]
    lines = [
        f"# {title}",
        "",
        f"Agent `{export['agent']}` · started {when(export['created_at'])} · "
        f"total cost {'$' + total if total is not None else 'unknown'}",
    ]
    for message in export["messages"]:
        heading = [ROLE_HEADINGS.get(message["role"], message["role"])]
        if message["model"]:
            heading.append(f"`{message['model']}`")
        heading.append(when(message["created_at"]))
        if message["cost_usd"] is not None:
            heading.append(f"${message['cost_usd']}")
        lines += ["", f"## {' · '.join(heading)}", "", message["content"] or "*(no text)*"]
        for attached in message["attachments"]:
            lines += [
                "",
                f"*(attached: {attached['name']}, {attached['type']}, {attached['size']} bytes)*",
            ]
        if message["status"] != MessageStatus.COMPLETE:
            lines += ["", f"*({message['status']})*"]
    return "\n".join(lines) + "\n"


def _file_name(title: str, updated_at: datetime, suffix: str) -> tuple[str, str]:
    """The title made a file name, with the date of the last activity: as written (for
    `filename*`, RFC 6266), and in ASCII for clients that read only `filename`."""

    def slug(text: str) -> str:
        return re.sub(r"[^\w]+", "-", text).strip("-")[:60].strip("-")

    date = updated_at.strftime("%Y-%m-%d")
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    ascii_name = slug(re.sub(r"[^A-Za-z0-9]+", " ", ascii_title)) or "conversation"
    return f"{slug(title) or 'conversation'}-{date}.{suffix}", f"{ascii_name}-{date}.{suffix}"


async def export_conversation(request: Request) -> Response:
    """The conversation's messages, as `GET /api/conversations/{id}` lists them (the store's
    one function for that: the branch the conversation shows), as a Markdown or JSON file to
    download.
    ---
    parameters:
      - {name: format, in: query, schema: {type: string, enum: [markdown, json]}}
    responses:
      200:
        description: the conversation as a file to download
        content:
          text/markdown: {schema: {type: string}}
          application/json: {schema: {type: object}}
      404: conversation_not_found
      422: invalid_query invalid_field
    """
    caller = await identify(request)
    state = app_state(request)
    conversation_id = path_id(request, "conversation_id")
    kind = request.query_params.get("format", "markdown")
    if kind not in EXPORT_TYPES:
        raise ApiError(422, "invalid_query", "`format` must be `markdown` or `json`")
    row = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=caller.user_id
    )
    if row is None:
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    # The branch the conversation shows, and its total as `GET` gives it (every branch's, its
    # title's and its coach reviews').
    messages = await state.store.replies.in_conversation(
        conversation_id=conversation_id, leaf_id=row["active_leaf_id"]
    )
    total = await state.store.conversations.total_cost(conversation_id=conversation_id)
    export = {
        "id": row["id"],
        "title": row["title"],
        "agent": row["agent"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "total_cost_usd": _exact_usd(total),
        "messages": [_export_message(m) for m in messages],
    }
    body = (
        json.dumps(export, ensure_ascii=False, indent=2)
        if kind == "json"
        else _export_markdown(export)
    )
    name, ascii_name = _file_name(row["title"], row["updated_at"], EXPORT_SUFFIXES[kind])
    return Response(
        body,
        media_type=EXPORT_TYPES[kind],
        headers={
            "Content-Disposition": f'attachment; filename="{ascii_name}";'
            f" filename*=UTF-8''{quote(name)}"
        },
    )


async def delete_conversation(request: Request) -> Response:
    """
    ---
    responses:
      204: deleted
      404: conversation_not_found
      422: invalid_field
    """
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
    Route("/api/conversations/{conversation_id}", rename_conversation, methods=["PATCH"]),
    Route("/api/conversations/{conversation_id}/export", export_conversation, methods=["GET"]),
    Route("/api/conversations/{conversation_id}", delete_conversation, methods=["DELETE"]),
    Route("/api/messages/{message_id}/activate", activate_message, methods=["POST"]),
]
