"""Shared links: a conversation's branch, read-only, for anyone holding the link.

    POST   /api/conversations/{id}/share   its owner makes a link to the branch it shows now
                                           (201 {"token", "url", "created_at"}); a new link
                                           revokes the one before
    DELETE /api/conversations/{id}/share   its owner revokes the live link (204)
    GET    /api/shared/{token}             no sign-in: the branch as it was when the link was
                                           made, without costs, models' usage or other branches
    GET    /shared/{token}                 the read-only page that shows it

Another user's conversation answers 404 as one that does not exist, and nothing is written; a
revoked or unknown token answers 404 `share_not_found`. The token is 32 random bytes
(`secrets.token_urlsafe`): the link is the only key, so it cannot be guessed.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from app.errors import ApiError
from app.http.auth.identity import identify
from app.http.input import path_id
from app.http.page_headers import page_headers
from app.http.routes.pages import STATIC_DIR
from app.http.state import AppState, app_state
from app.storage.tables import now

TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 64


async def _owned(state: AppState, request: Request) -> dict:
    caller = await identify(request)
    conversation_id = path_id(request, "conversation_id")
    conversation = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=caller.user_id
    )
    if conversation is None or conversation["agent"] != "chat":
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    return conversation


async def share(request: Request) -> Response:
    """A link to the branch the conversation shows now; a new link revokes the one before.
    ---
    responses:
      201:
        description: the link
        content:
          application/json:
            schema:
              type: object
              required: [token, url, created_at]
              properties:
                token: {type: string}
                url: {type: string}
                created_at: {type: string}
      404: conversation_not_found
      409: nothing_to_share
      422: invalid_field
    """
    state = app_state(request)
    conversation = await _owned(state, request)
    if conversation["active_leaf_id"] is None:
        raise ApiError(409, "nothing_to_share", "the conversation has no messages yet")
    token, at = secrets.token_urlsafe(TOKEN_BYTES), now()
    await state.store.shares.make(
        token=token,
        conversation_id=conversation["id"],
        user_id=conversation["user_id"],
        leaf_id=conversation["active_leaf_id"],
        at=at,
    )
    return JSONResponse(
        {"token": token, "url": f"/shared/{token}", "created_at": at.isoformat()},
        status_code=201,
    )


async def unshare(request: Request) -> Response:
    """The conversation's live link revoked.
    ---
    responses:
      204: revoked (also when there was none)
      404: conversation_not_found
      422: invalid_field
    """
    state = app_state(request)
    conversation = await _owned(state, request)
    await state.store.shares.revoke(
        conversation_id=conversation["id"], user_id=conversation["user_id"], at=now()
    )
    return Response(status_code=204)


def _token(request: Request) -> str:
    token = request.path_params["token"]
    if (
        not (0 < len(token) <= MAX_TOKEN_CHARS)
        or not token.replace("-", "").replace("_", "").isalnum()
    ):
        raise ApiError(404, "share_not_found", "no such shared conversation")
    return token


async def shared(request: Request) -> Response:
    """A shared branch, for anyone holding the link: no sign-in, no costs, ids or other
    branches.
    ---
    responses:
      200:
        description: the branch as it was when the link was made
        content:
          application/json:
            schema:
              type: object
              required: [title, shared_at, messages]
              properties:
                title: {type: string}
                shared_at: {type: string}
                messages:
                  type: array
                  items:
                    type: object
                    required: [role, content, status, created_at]
                    properties:
                      role: {type: string}
                      content: {type: string}
                      status: {type: string}
                      created_at: {type: string}
      404: share_not_found
    """
    state = app_state(request)
    link = await state.store.shares.live(token=_token(request))
    conversation = link and await state.store.conversations.get(
        conversation_id=link["conversation_id"], user_id=link["user_id"]
    )
    if not link or conversation is None:
        raise ApiError(404, "share_not_found", "no such shared conversation")
    rows = await state.store.replies.in_conversation(
        conversation_id=link["conversation_id"], leaf_id=link["leaf_id"]
    )
    return JSONResponse(
        {
            "title": conversation["title"],
            "shared_at": link["created_at"].isoformat(),
            # What was said, and when: no costs, tokens, ids or other branches.
            "messages": [
                {
                    "role": row["role"],
                    "content": row["content"],
                    "status": row["status"],
                    "created_at": row["created_at"].isoformat(),
                }
                for row in rows
            ],
        },
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


async def shared_page(request: Request) -> Response:
    """The read-only page of a shared branch (it reads `GET /api/shared/{token}`).
    ---
    responses:
      200:
        description: the page
        content: {text/html: {}}
    """
    headers = {"Cache-Control": "no-cache", **page_headers(app_state(request).settings)}
    return FileResponse(STATIC_DIR / "shared.html", headers=headers)


routes = [
    Route("/api/conversations/{conversation_id}/share", share, methods=["POST"]),
    Route("/api/conversations/{conversation_id}/share", unshare, methods=["DELETE"]),
    Route("/api/shared/{token}", shared, methods=["GET"]),
    Route("/shared/{token}", shared_page, methods=["GET"]),
]
