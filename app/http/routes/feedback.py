"""Feedback on replies: thumbs up or down and an optional comment, per reply and per user.

    PUT    /api/messages/{id}/feedback       {"rating": "up"|"down", "comment"?}  set or change
    DELETE /api/messages/{id}/feedback       remove it (204, also when there was none)
    GET    /api/conversations/{id}/feedback  the caller's, on every reply of the conversation

A reply is rated by the user whose conversation it is: another user's reply (an admin's too),
or a message that is not a reply, answers 404 as one that does not exist, and nothing is
written. The cost report puts the ratings beside what the replies cost (`rated_replies`,
`positive_share` per agent and model).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import ApiError
from app.http.auth.identity import identify
from app.http.input import json_body, path_id
from app.http.state import AppState, app_state
from app.storage.feedback import DOWN, UP
from app.storage.tables import now

RATINGS = {"up": UP, "down": DOWN}
NAMES = {value: name for name, value in RATINGS.items()}
MAX_COMMENT = 2000


async def _own_reply(state: AppState, message_id: str, *, user_id: str) -> dict[str, Any]:
    message = await state.store.replies.message(message_id=message_id)
    conversation = (
        await state.store.conversations.get(
            conversation_id=message["conversation_id"], user_id=user_id
        )
        if message is not None and message["role"] == "assistant"
        else None
    )
    if message is None or conversation is None:
        raise ApiError(404, "message_not_found", f"no reply {message_id!r}")
    return message


def _rating(body: dict[str, Any]) -> tuple[int, str | None]:
    rating = RATINGS.get(body.get("rating")) if isinstance(body.get("rating"), str) else None
    if rating is None:
        raise ApiError(422, "invalid_field", '`rating` must be "up" or "down"')
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise ApiError(422, "invalid_field", "`comment` must be a string")
    if comment is not None and len(comment) > MAX_COMMENT:
        raise ApiError(422, "invalid_field", f"`comment` must be at most {MAX_COMMENT} characters")
    return rating, (comment.strip() or None) if comment is not None else None


async def rate_reply(request: Request) -> Response:
    """The caller's rating of their reply, set or changed.
    ---
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [rating]
            properties:
              rating: {enum: [up, down]}
              comment: {type: [string, "null"], maxLength: 2000}
    responses:
      200:
        description: the rating
        content:
          application/json:
            schema:
              type: object
              required: [message_id, rating, comment]
              properties:
                message_id: {type: string}
                rating: {enum: [up, down]}
                comment: {type: [string, "null"]}
      404: message_not_found
      422: invalid_field
    """
    state = app_state(request)
    caller = await identify(request)
    message_id = path_id(request, "message_id")
    # The body first: bad input is refused whoever's the reply is, and writes nothing.
    rating, comment = _rating(await json_body(request))
    await _own_reply(state, message_id, user_id=caller.user_id)
    await state.store.feedback.rate(
        message_id=message_id, user_id=caller.user_id, rating=rating, comment=comment, at=now()
    )
    return JSONResponse({"message_id": message_id, "rating": NAMES[rating], "comment": comment})


async def remove_rating(request: Request) -> Response:
    """The caller's rating of their reply taken back (also when there was none).
    ---
    responses:
      204: the rating is gone
      404: message_not_found
      422: invalid_field
    """
    state = app_state(request)
    caller = await identify(request)
    message_id = path_id(request, "message_id")
    await _own_reply(state, message_id, user_id=caller.user_id)
    await state.store.feedback.remove(message_id=message_id, user_id=caller.user_id)
    return Response(status_code=204)


async def conversation_feedback(request: Request) -> Response:
    """The caller's ratings of the conversation's replies, every branch's.
    ---
    responses:
      200:
        description: message id -> its rating
        content:
          application/json:
            schema:
              type: object
              required: [feedback]
              properties:
                feedback:
                  type: object
                  additionalProperties:
                    type: object
                    required: [rating, comment]
                    properties:
                      rating: {enum: [up, down]}
                      comment: {type: [string, "null"]}
      404: conversation_not_found
      422: invalid_field
    """
    state = app_state(request)
    caller = await identify(request)
    conversation_id = path_id(request, "conversation_id")
    if (
        await state.store.conversations.get(conversation_id=conversation_id, user_id=caller.user_id)
        is None
    ):
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    rows = await state.store.feedback.in_conversation(
        conversation_id=conversation_id, user_id=caller.user_id
    )
    return JSONResponse(
        {
            "feedback": {
                row["message_id"]: {"rating": NAMES[row["rating"]], "comment": row["comment"]}
                for row in rows
            }
        }
    )


routes = [
    Route("/api/messages/{message_id}/feedback", rate_reply, methods=["PUT"]),
    Route("/api/messages/{message_id}/feedback", remove_rating, methods=["DELETE"]),
    Route("/api/conversations/{conversation_id}/feedback", conversation_feedback, methods=["GET"]),
]
