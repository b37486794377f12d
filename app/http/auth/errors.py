"""The answers a request gets when it cannot be identified.

    ApiError (app/errors.py)
     ├── Unauthorized      401, `WWW-Authenticate: Bearer`; code `unauthorized` (no token),
     │                     `invalid_token` (any token we refuse) or `token_expired`
     └── AuthUnavailable   503 `auth_unavailable`: no key to verify with can be had at all
                           (the JWKS was never fetched and cannot be reached now)

Messages say what is wrong with a token in fixed words, never the token nor any of its claims'
values: they reach the caller, and sometimes a log.
"""

from __future__ import annotations

from app.errors import ApiError

# Seconds a client is asked to wait after a 503: the JWKS is retried this often while we hold
# no key at all (`jwks.RETRY_WHEN_EMPTY`).
RETRY_AFTER = 5


class Unauthorized(ApiError):
    def __init__(self, code: str, message: str) -> None:
        # RFC 6750 3: no `error` attribute when no token came, `invalid_token` when one did.
        challenge = "Bearer" if code == "unauthorized" else 'Bearer error="invalid_token"'
        super().__init__(401, code, message, headers={"WWW-Authenticate": challenge})


def invalid_token(message: str) -> Unauthorized:
    return Unauthorized("invalid_token", message)


class AuthUnavailable(ApiError):
    def __init__(self) -> None:
        super().__init__(
            503,
            "auth_unavailable",
            "the server cannot verify tokens right now (its JWKS is unreachable); retry shortly",
            headers={"Retry-After": str(RETRY_AFTER)},
        )
