"""Who is calling, for the routes: one call each.

    caller = await identify(request)                      # Authorization: Bearer <JWT>
    caller = await identify_from_query(request)           # GET …/stream: also ?access_token=
    caller = await identify_stream(request, message_id)   # a stream_url: ?stream_token=
    await require_admin(request)                          # app/http/admin.py

Each returns a `Caller(user_id, is_admin)` or raises `Unauthorized` (401) / `AuthUnavailable`
(503). Under AUTH_MODE=dev they return the development user without looking at any token,
except a `?stream_token=`, which is verified in every mode (the server issued it).
"""

from __future__ import annotations

from starlette.requests import Request

from app.http.auth.jwt_tokens import Caller
from app.http.state import app_state

__all__ = ["Caller", "bearer_token", "identify", "identify_from_query", "identify_stream"]


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def identify(request: Request) -> Caller:
    return await app_state(request).auth.caller(bearer_token(request))


async def identify_from_query(request: Request) -> Caller:
    """For the one-step `GET …/stream` forms, which a browser opens as an EventSource: the token
    may come as `?access_token=` (the header still wins when both are sent)."""
    token = bearer_token(request) or request.query_params.get("access_token") or None
    return await app_state(request).auth.caller(token)


async def identify_stream(request: Request, message_id: str) -> Caller:
    """For `GET /api/messages/{message_id}/stream`: the `stream_token` its `stream_url` carries,
    else the user's own token as for `identify_from_query` (a client resuming by id)."""
    stream_token = request.query_params.get("stream_token")
    if stream_token:
        user_id = app_state(request).auth.verify_stream_token(stream_token, message_id)
        return Caller(user_id=user_id, is_admin=False)
    return await identify_from_query(request)
