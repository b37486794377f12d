"""`python -m app token --user alice`: a user token for trying the page or the API under
`AUTH_MODE=jwt`, signed as a host app would sign it (docs/browser.md, "Signing in").

It needs `AUTH_JWT_SECRET`, in production too: the server checks tokens with that secret, so
a token made without it would be refused, and there is no other key to make one with. Tokens
of a JWKS (RS256, ES256, EdDSA) are signed by whoever holds its private key, never by us. The
token carries what the server asks of one: the user claim (`AUTH_USER_CLAIM`), `exp`, and the
audience and issuer when they are set; the admin claim only when asked for.
"""

from __future__ import annotations

import time

import jwt

from app.http.auth.jwt_tokens import user_id_from
from app.settings import ConfigError, Settings

ALGORITHM = "HS256"


def mint_token(settings: Settings, *, user: str, ttl: float, admin: bool = False) -> str:
    """A token for `user` good for `ttl` seconds; ConfigError (one line, naming the setting)
    when these settings cannot make one the server would accept."""
    if settings.auth_jwt_secret is None:
        raise ConfigError(
            "`token` needs AUTH_JWT_SECRET, the secret the server checks HS256 tokens with"
            " (a JWKS's tokens come from the holder of its private key)"
        )
    if ALGORITHM not in settings.jwt_algorithms:
        raise ConfigError(f"`token` signs {ALGORITHM}, which AUTH_JWT_ALGORITHMS does not accept")
    if user_id_from(user) is None:
        raise ConfigError("--user must be 1 to 64 printable characters")
    if ttl <= 0:
        raise ConfigError("--ttl must be a positive number of seconds")
    now = int(time.time())
    claims: dict[str, object] = {settings.auth_user_claim: user, "iat": now, "exp": now + int(ttl)}
    if settings.auth_jwt_audience:
        claims["aud"] = settings.auth_jwt_audience
    if settings.auth_jwt_issuer:
        claims["iss"] = settings.auth_jwt_issuer
    if admin:
        if settings.auth_admin_claim is None or settings.auth_admin_value is None:
            raise ConfigError("--admin needs AUTH_ADMIN_CLAIM and AUTH_ADMIN_VALUE")
        claims[settings.auth_admin_claim] = settings.auth_admin_value
    secret = settings.auth_jwt_secret.get_secret_value()
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
