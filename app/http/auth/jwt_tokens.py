"""Verifying the host app's JWTs with PyJWT, into a `Caller`.

Algorithm confusion is impossible by construction: every key is a `PyJWK` bound to one
algorithm (PyJWT refuses a token whose `alg` differs from its key's), HMAC keys come only from
AUTH_JWT_SECRET and asymmetric keys only from AUTH_JWKS_URL (`JwksCache` skips `oct` keys), and
a token's `alg` must be in the allow-list before any key is looked up (`none` never is). So an
HS256 token "signed" with the RSA public key as its secret finds no HMAC key to verify with.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import dataclass

import jwt
from jwt import PyJWK
from jwt.exceptions import InvalidSubjectError

from app.http.auth.errors import Unauthorized, invalid_token
from app.http.auth.jwks import JwksCache

# A bearer token longer than this is refused unread: real ones are well under 2 KB, and parsing
# (base64, JSON) a huge one on every request is work an attacker would choose for us.
MAX_TOKEN_CHARS = 8192
# `conversations.user_id` is String(64).
MAX_USER_ID_CHARS = 64

# PyJWT's refusals, in the caller's words: fixed text, never a claim's value.
_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is meant for another audience"),
    (jwt.InvalidIssuerError, "the token comes from another issuer"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (InvalidSubjectError, "the token's 'sub' claim is not a string"),
    (jwt.DecodeError, "the token is malformed"),
)


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str
    is_admin: bool


def user_id_from(value: object) -> str | None:
    """A claim's value as a user id, or None when it cannot be one: 1 to 64 printable
    characters (integers, which some host apps use for ids, count as their digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_USER_ID_CHARS and value.isprintable():
        return value
    return None


def hmac_keys(secret: bytes, algorithms: Collection[str]) -> dict[str, PyJWK]:
    """AUTH_JWT_SECRET as one bound key per allowed HMAC algorithm, built once."""
    k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    return {
        alg: PyJWK({"kty": "oct", "k": k}, algorithm=alg)
        for alg in algorithms
        if alg.startswith("HS")
    }


class JwtVerifier:
    def __init__(
        self,
        *,
        algorithms: Collection[str],
        hmac: dict[str, PyJWK],
        jwks: JwksCache | None,
        audience: str | None,
        issuer: str | None,
        leeway: float,
        user_claim: str,
        admin_claim: str | None,
        admin_value: str | None,
    ) -> None:
        self._algorithms = frozenset(algorithms)
        self._hmac, self._jwks = hmac, jwks
        self._audience, self._issuer, self._leeway = audience, issuer, leeway
        self._user_claim = user_claim
        self._admin_claim, self._admin_value = admin_claim, admin_value

    async def verify(self, token: str) -> Caller:
        if len(token) > MAX_TOKEN_CHARS:
            raise invalid_token(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise invalid_token("the token is malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._algorithms:
            raise invalid_token("the token's algorithm is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise invalid_token("the token is malformed")
        key = self._hmac.get(alg)
        if key is None:
            # Settings allow an asymmetric algorithm only with AUTH_JWKS_URL, so jwks is set.
            assert self._jwks is not None
            key = await self._jwks.key(kid)
            if key.algorithm_name != alg:
                # Recent PyJWT refuses this too; older ones verify with the key's algorithm.
                raise invalid_token("the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                # A token without an expiry would be good forever once leaked.
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token_expired", "the token has expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), None)
            raise invalid_token(reason or "the token is not valid") from None
        return self._caller(claims)

    def _caller(self, claims: dict[str, object]) -> Caller:
        if self._user_claim not in claims:
            raise invalid_token(f"the token has no {self._user_claim!r} claim")
        user_id = user_id_from(claims[self._user_claim])
        if user_id is None:
            raise invalid_token(
                f"the token's {self._user_claim!r} claim is not a user id "
                f"(1 to {MAX_USER_ID_CHARS} printable characters)"
            )
        return Caller(user_id=user_id, is_admin=self._is_admin(claims))

    def _is_admin(self, claims: dict[str, object]) -> bool:
        if self._admin_claim is None:
            return False
        value = claims.get(self._admin_claim)
        if isinstance(value, list):
            return self._admin_value in value
        return value == self._admin_value
