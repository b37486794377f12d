"""`Authenticator`: built once by the lifespan from the settings, kept in `AppState.auth`."""

from __future__ import annotations

import hmac

from app.http.auth.errors import Unauthorized, invalid_token
from app.http.auth.jwks import JwksCache
from app.http.auth.jwt_tokens import Caller, JwtVerifier, hmac_keys
from app.http.auth.stream_tokens import StreamTokens, derive_key
from app.jobs.keys import is_service_key
from app.settings import Settings
from app.upstream.pool import ClientPool


class Authenticator:
    def __init__(self, settings: Settings, http: ClientPool) -> None:
        # AUTH_MODE=dev: every caller is the one development user, whatever it sends.
        self.dev_caller = (
            Caller(settings.dev_user_id, is_admin=False) if settings.auth == "dev" else None
        )
        self._verifier = None if self.dev_caller else _verifier(settings, http)
        self._stream_tokens = StreamTokens(
            derive_key(settings.stream_token_root), ttl=settings.stream_token_ttl
        )
        self._admin_token = (
            settings.admin_token.get_secret_value().encode() if settings.admin_token else None
        )
        # Whether anyone at all can pass `require_admin`.
        self.admins_exist = self._admin_token is not None or (
            self._verifier is not None and settings.auth_admin_claim is not None
        )

    async def caller(self, token: str | None) -> Caller:
        if token is not None and is_service_key(token):
            # A service key is for /v1 alone (app/jobs/), in every AUTH_MODE, dev included.
            raise invalid_token("a service key opens no user route; send a user's token")
        if self.dev_caller is not None:
            return self.dev_caller
        if token is None:
            raise Unauthorized("unauthorized", "send Authorization: Bearer <token>")
        assert self._verifier is not None  # built whenever there is no dev caller
        return await self._verifier.verify(token)

    def is_admin_token(self, token: str) -> bool:
        # Constant time: how much of a guess matched must not show in the response time.
        return self._admin_token is not None and hmac.compare_digest(
            token.encode(), self._admin_token
        )

    def issue_stream_token(self, message_id: str, user_id: str) -> str:
        return self._stream_tokens.issue(message_id, user_id)

    def verify_stream_token(self, token: str, message_id: str) -> str:
        return self._stream_tokens.verify(token, message_id)


def _verifier(settings: Settings, http: ClientPool) -> JwtVerifier:
    algorithms = settings.jwt_algorithms
    secret = settings.auth_jwt_secret
    jwks = (
        JwksCache(
            http,
            str(settings.auth_jwks_url),
            algorithms=[alg for alg in algorithms if not alg.startswith("HS")],
            timeout=settings.auth_jwks_timeout,
        )
        if settings.auth_jwks_url
        else None
    )
    return JwtVerifier(
        algorithms=algorithms,
        hmac=hmac_keys(secret.get_secret_value().encode(), algorithms) if secret else {},
        jwks=jwks,
        audience=settings.auth_jwt_audience,
        issuer=settings.auth_jwt_issuer,
        leeway=settings.auth_jwt_leeway,
        user_claim=settings.auth_user_claim,
        admin_claim=settings.auth_admin_claim,
        admin_value=settings.auth_admin_value,
    )
