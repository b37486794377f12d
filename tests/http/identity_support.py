"""Keys, tokens and a JWKS endpoint for the identity tests: the host app's side of sign-in."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.dev.threaded_server import ThreadedServer
from tests.support import local_client

SECRET = "host-app-shared-secret-0123456789abcdef"
AUDIENCE = "authenticated"
ISSUER = "https://host.example/auth"
USER = "user-1"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)

_TO_JWK = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}


def public_jwk(private_key: Any, alg: str, kid: str) -> dict[str, Any]:
    jwk = _TO_JWK[alg].to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def claims(**changes: Any) -> dict[str, Any]:
    """A valid token's claims; a change to None drops that claim."""
    now = int(time.time())
    base = {"sub": USER, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def token(key: Any, alg: str, kid: str | None = None, **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm=alg, headers={"kid": kid} if kid else None)


# A server that signs users in with the host app's HS256 tokens (AUTH_MODE=jwt): the settings
# to start it with, and a user's Authorization header and client for it.
JWT_SETTINGS: dict[str, Any] = {
    "auth_mode": "jwt",
    "auth_jwt_secret": SECRET,
    "auth_jwt_audience": AUDIENCE,
    "auth_jwt_issuer": ISSUER,
}


def bearer(user: str, **changes: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(SECRET, 'HS256', sub=user, **changes)}"}


def signed_in(url: str, user: str) -> httpx.Client:
    return local_client(url, headers=bearer(user))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An HS256 token signed with any bytes at all, e.g. a PEM public key (which PyJWT's own
    encoder refuses to use as an HMAC secret: an attacker's tooling does not)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


class JwksServer:
    """The host app's JWKS endpoint: its keys can rotate and it can go down."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.up = True
        # Whitespace (valid JSON padding) sent before the keys: how many bytes, in chunks of
        # `drip_chunk` bytes `drip_every` seconds apart (0: all at once).
        self.padding = 0
        self.drip_chunk = 40
        self.drip_every = 0.0
        self.requests = 0
        self.url = ""
        self.app = Starlette(routes=[Route("/jwks.json", self._jwks)])

    async def _jwks(self, request: Request) -> Response:
        self.requests += 1
        if not self.up:
            return JSONResponse({"error": "down for maintenance"}, status_code=503)
        if not self.padding:
            return JSONResponse({"keys": self.keys})
        return StreamingResponse(self._padded(), media_type="application/json")

    async def _padded(self) -> AsyncIterator[bytes]:
        left = self.padding
        while left > 0:
            chunk = min(left, self.drip_chunk)
            yield b" " * chunk
            left -= chunk
            if self.drip_every:
                await asyncio.sleep(self.drip_every)
        yield json.dumps({"keys": self.keys}).encode()


@contextmanager
def serve_jwks() -> Iterator[JwksServer]:
    jwks = JwksServer()
    with ThreadedServer(jwks.app, log_level="critical") as server:
        jwks.url = f"{server.url}/jwks.json"
        yield jwks
