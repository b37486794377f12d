"""The admin check of the admin routes: the run-time configuration writes
(`PUT/DELETE /api/catalog/agents/*`) and the cost report (`GET /api/admin/costs`).

An admin is a caller sending `Authorization: Bearer <ADMIN_TOKEN>` (scripts; compared in
constant time), or, under AUTH_MODE=jwt, a user whose token carries AUTH_ADMIN_CLAIM =
AUTH_ADMIN_VALUE. With neither configured those routes are refused with 403 (not 503): it is a
deliberate state of the deployment, not a passing outage, and retrying will not help. No or a
wrong token is 401; a valid user token without the admin claim is 403 `forbidden`.
"""

from __future__ import annotations

from starlette.requests import Request

from app.errors import ApiError
from app.http.auth.errors import Unauthorized
from app.http.auth.identity import bearer_token
from app.http.state import app_state


async def require_admin(request: Request) -> None:
    auth = app_state(request).auth
    if not auth.admins_exist:
        raise ApiError(
            403,
            "admin_disabled",
            "admin routes are disabled: set ADMIN_TOKEN (or, with AUTH_MODE=jwt, "
            "AUTH_ADMIN_CLAIM and AUTH_ADMIN_VALUE) on the server to enable them",
        )
    token = bearer_token(request)
    if token is not None and auth.is_admin_token(token):
        return
    if auth.dev_caller is not None:
        # The development user is no admin: ADMIN_TOKEN is the only way in, as before JWTs.
        raise Unauthorized("unauthorized", "send Authorization: Bearer <ADMIN_TOKEN>")
    if not (await auth.caller(token)).is_admin:
        raise ApiError(403, "forbidden", "this needs an admin")
