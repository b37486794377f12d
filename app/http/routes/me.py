"""`GET /api/me`: who the server takes the caller to be (a host app checks its wiring here)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.http.auth.identity import identify


async def me(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: who the caller is
        content: {application/json: {schema: {type: object}}}
    """
    caller = await identify(request)
    return JSONResponse({"user_id": caller.user_id, "is_admin": caller.is_admin})


routes = [Route("/api/me", me, methods=["GET"])]
