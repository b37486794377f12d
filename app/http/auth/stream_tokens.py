"""Stream tokens: what a two-step `stream_url` carries, since a browser's EventSource cannot
send an `Authorization` header.

A stream token is a JWT we sign ourselves (HS256, `aud` = `STREAM_AUDIENCE`) naming one reply
(`mid`) and its user (`sub`), valid STREAM_TOKEN_TTL seconds: long enough for a long reply and
its reconnects, and worth nothing beyond that one reply's stream.

The key is derived from `Settings.stream_token_root` with HMAC and a label of its own, so it
differs from AUTH_JWT_SECRET even when derived from it: a stream token is never a valid user
JWT, and a user JWT is never a stream token. Every process derives the same key from the same
configured secret; without one, a process makes a random key (development and tests only:
settings refuse that in production, where several processes must accept each other's tokens).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import jwt

from app.http.auth.errors import Unauthorized, invalid_token
from app.http.auth.jwt_tokens import MAX_TOKEN_CHARS, user_id_from

STREAM_AUDIENCE = "streamchat:stream"
_LABEL = b"streamchat stream-token key v1"


def derive_key(root: bytes | None) -> bytes:
    return hmac.new(root or secrets.token_bytes(32), _LABEL, hashlib.sha256).digest()


class StreamTokens:
    def __init__(self, key: bytes, *, ttl: float) -> None:
        self._key, self._ttl = key, ttl

    def issue(self, message_id: str, user_id: str) -> str:
        claims = {
            "aud": STREAM_AUDIENCE,
            "sub": user_id,
            "mid": message_id,
            "exp": int(time.time() + self._ttl),
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str, message_id: str) -> str:
        """The user the token was issued to, if it is ours, unexpired and for `message_id`."""
        if len(token) > MAX_TOKEN_CHARS:
            raise invalid_token(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=STREAM_AUDIENCE,
                options={"require": ["exp", "sub", "mid"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token_expired", "the stream token has expired") from None
        except jwt.InvalidTokenError:
            raise invalid_token("the stream token is not valid") from None
        user_id = user_id_from(claims["sub"])
        if user_id is None or claims["mid"] != message_id:
            raise invalid_token("the stream token is for another reply")
        return user_id
