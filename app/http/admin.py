"""The admin check for run-time configuration writes, until real authentication exists.

`Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time. Without ADMIN_TOKEN configured
the writes are refused with 403 (not 503): it is a deliberate state of the deployment, not a
passing outage, and retrying will not help. A wrong or missing token is 401.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from app.errors import ApiError
from app.settings import Settings


def require_admin(request: Request, settings: Settings) -> None:
    if settings.admin_token is None:
        raise ApiError(
            403,
            "admin_disabled",
            "changing agents at run time is disabled: set ADMIN_TOKEN on the server to enable it",
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <ADMIN_TOKEN>")
