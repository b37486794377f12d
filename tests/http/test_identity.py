"""Identity through real servers: host-app JWTs (HS256, and RS256/ES256/EdDSA from a JWKS
served over HTTP), every way a token is refused, stream tokens, admins, and the settings that
decide the mode."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.dev.threaded_server import ThreadedServer, free_port
from app.errors import EXCEPTION_HANDLERS
from app.http.auth.authenticator import Authenticator
from app.http.auth.identity import identify_from_query, identify_stream
from app.http.auth.stream_tokens import StreamTokens, derive_key
from app.settings import Settings
from app.upstream.pool import ClientPool
from tests.http.identity_support import (
    AUDIENCE,
    EC_KEY,
    ED_KEY,
    ISSUER,
    OTHER_EC_KEY,
    RSA_KEY,
    RSA_PUBLIC_PEM,
    SECRET,
    USER,
    JwksServer,
    claims,
    hs256_by_hand,
    public_jwk,
    serve_jwks,
    token,
)
from tests.support import local_client

ADMIN_TOKEN = "script-admin-token"


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with serve_jwks() as server:
        server.keys = [
            public_jwk(RSA_KEY, "RS256", "rsa-1"),
            public_jwk(EC_KEY, "ES256", "ec-1"),
            public_jwk(ED_KEY, "EdDSA", "ed-1"),
        ]
        yield server


def jwt_settings(jwks_url: str, **overrides) -> dict:
    return {
        "auth_mode": "jwt",
        "auth_jwt_secret": SECRET,
        "auth_jwks_url": jwks_url,
        "auth_jwt_audience": AUDIENCE,
        "auth_jwt_issuer": ISSUER,
        "auth_admin_claim": "role",
        "auth_admin_value": "service_role",
        "admin_token": ADMIN_TOKEN,
        **overrides,
    }


@pytest.fixture
def api(start_server, jwks) -> Iterator[httpx.Client]:
    server = start_server(**jwt_settings(jwks.url))
    with local_client(server.url) as http:
        yield http


def me(api: httpx.Client, bearer: str | None) -> httpx.Response:
    return api.get("/api/me", headers={"Authorization": f"Bearer {bearer}"} if bearer else {})


ACCEPTED = {
    "HS256": (SECRET, None),
    "RS256": (RSA_KEY, "rsa-1"),
    "ES256": (EC_KEY, "ec-1"),
    "EdDSA": (ED_KEY, "ed-1"),
}


def test_me_accepts_each_algorithm_and_reads_the_admin_claim(api, jwks):
    for alg, (key, kid) in ACCEPTED.items():
        response = me(api, token(key, alg, kid))
        assert response.status_code == 200, (alg, response.text)
        assert response.json() == {"user_id": USER, "is_admin": False}
    assert jwks.requests == 1, "one JWKS fetch serves all three asymmetric keys"
    for role in ("service_role", ["editor", "service_role"]):
        body = me(api, token(RSA_KEY, "RS256", "rsa-1", role=role)).json()
        assert body == {"user_id": USER, "is_admin": True}
    for role in ("authenticated", ["editor"], None):
        assert me(api, token(SECRET, "HS256", role=role)).json()["is_admin"] is False
    # Clocks a little apart: expired 10 s ago is inside the 30 s leeway.
    assert me(api, token(SECRET, "HS256", exp=int(time.time()) - 10)).status_code == 200


def test_every_bad_token_is_401_with_its_code_and_a_bearer_challenge(api):
    now = int(time.time())
    cases = {
        "expired": (token(SECRET, "HS256", exp=now - 120), "token_expired"),
        "expired RS256": (token(RSA_KEY, "RS256", "rsa-1", exp=now - 120), "token_expired"),
        "not yet valid": (token(SECRET, "HS256", nbf=now + 120), "invalid_token"),
        "wrong audience": (token(SECRET, "HS256", aud="someone-else"), "invalid_token"),
        "wrong issuer": (token(SECRET, "HS256", iss="https://evil.example"), "invalid_token"),
        "bad signature": (token(OTHER_EC_KEY, "ES256", "ec-1"), "invalid_token"),
        "another secret": (token("another-secret-of-32-bytes-or-more!!", "HS256"), "invalid_token"),
        "alg none": (jwt.encode(claims(), None, algorithm="none"), "invalid_token"),
        "HS256 keyed with the RSA public key": (
            hs256_by_hand(RSA_PUBLIC_PEM, {"alg": "HS256", "kid": "rsa-1"}, claims()),
            "invalid_token",
        ),
        "ES256 header on the RSA key": (
            token(EC_KEY, "ES256", "rsa-1"),
            "invalid_token",
        ),
        "no user claim": (token(SECRET, "HS256", sub=None), "invalid_token"),
        "user id too long": (token(SECRET, "HS256", sub="u" * 65), "invalid_token"),
        "user id not printable": (token(SECRET, "HS256", sub="a\nb"), "invalid_token"),
        "user id not a string": (token(SECRET, "HS256", sub=["a"]), "invalid_token"),
        "no expiry": (token(SECRET, "HS256", exp=None), "invalid_token"),
        "unknown kid": (token(RSA_KEY, "RS256", "rsa-404"), "invalid_token"),
        "malformed": ("not-a-jwt", "invalid_token"),
        "three bad segments": ("a.b.c", "invalid_token"),
        "oversized": (token(SECRET, "HS256", pad="x" * 9000), "invalid_token"),
        "no token": (None, "unauthorized"),
    }
    for name, (bearer, code) in cases.items():
        response = me(api, bearer)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"]["code"] == code, (name, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), name
        if bearer:
            assert bearer not in response.text and bearer[-20:] not in response.text, name
    basic = api.get("/api/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.json()["error"]["code"] == "unauthorized"
    assert basic.headers["www-authenticate"] == "Bearer"


def test_no_key_to_verify_with_at_all_is_503(start_server):
    unreachable = f"http://127.0.0.1:{free_port()}/jwks.json"
    server = start_server(**jwt_settings(unreachable))
    with local_client(server.url) as http:
        response = me(http, token(RSA_KEY, "RS256", "rsa-1"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "auth_unavailable"
        # HS256 needs no JWKS: those users are not locked out by its outage.
        assert me(http, token(SECRET, "HS256")).status_code == 200


def test_an_hs256_token_is_refused_when_only_a_jwks_is_configured(start_server, jwks):
    server = start_server(**jwt_settings(jwks.url, auth_jwt_secret=None, stream_token_secret=None))
    with local_client(server.url) as http:
        forged = hs256_by_hand(RSA_PUBLIC_PEM, {"alg": "HS256", "kid": "rsa-1"}, claims())
        response = me(http, forged)
        assert response.status_code == 401
        assert response.json()["error"] == {
            "code": "invalid_token",
            "message": "the token's algorithm is not accepted",
        }
        assert me(http, token(RSA_KEY, "RS256", "rsa-1")).status_code == 200


def test_dev_mode_is_the_one_development_user(client):
    assert client.get("/api/me").json() == {"user_id": "dev", "is_admin": False}
    bearer = {"Authorization": f"Bearer {token(SECRET, 'HS256')}"}
    assert client.get("/api/me", headers=bearer).json()["user_id"] == "dev"


def test_admins_by_claim_or_admin_token_and_users_are_forbidden(api):
    path = "/api/catalog/agents/chat"
    as_admin = {"Authorization": f"Bearer {token(SECRET, 'HS256', role='service_role')}"}
    as_user = {"Authorization": f"Bearer {token(SECRET, 'HS256')}"}
    as_script = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert api.delete(path, headers=as_admin).status_code == 200
    assert api.delete(path, headers=as_script).status_code == 200
    forbidden = api.delete(path, headers=as_user)
    assert (forbidden.status_code, forbidden.json()["error"]["code"]) == (403, "forbidden")
    missing = api.delete(path)
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "unauthorized")
    # The script token is for admin writes, not a user: /api/me does not take it.
    assert me(api, ADMIN_TOKEN).json()["error"]["code"] == "invalid_token"


# --- The token in the query, and stream tokens (a probe app calling the route helpers) ---


def probe_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, _ProbeState]]:
        pool = ClientPool(size=1, timeout=5)
        try:
            yield {"app": _ProbeState(Authenticator(settings, pool))}
        finally:
            await pool.aclose()

    async def from_query(request: Request) -> JSONResponse:
        return JSONResponse(asdict(await identify_from_query(request)))

    async def stream(request: Request) -> JSONResponse:
        caller = await identify_stream(request, request.path_params["message_id"])
        return JSONResponse(asdict(caller))

    return Starlette(
        routes=[
            Route("/chat/stream", from_query),
            Route("/messages/{message_id}/stream", stream),
        ],
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )


class _ProbeState:
    """The one part of `AppState` the route helpers read."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth


STREAM_SECRET = "stream-token-secret-0123456789abcdef"


@pytest.fixture
def probe(make_settings, jwks) -> Iterator[httpx.Client]:
    settings = make_settings(**jwt_settings(jwks.url, stream_token_secret=STREAM_SECRET))
    with (
        ThreadedServer(probe_app(settings), log_level="critical") as server,
        local_client(server.url) as http,
    ):
        yield http


def code_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_the_one_step_stream_form_takes_the_token_from_the_query(probe):
    ok = probe.get("/chat/stream", params={"message": "hi", "access_token": token(SECRET, "HS256")})
    assert ok.json() == {"user_id": USER, "is_admin": False}
    assert code_of(probe.get("/chat/stream", params={"message": "hi"})) == (401, "unauthorized")
    bad = probe.get("/chat/stream", params={"access_token": "nope"})
    assert code_of(bad) == (401, "invalid_token")


def test_stream_tokens_are_bound_to_one_reply_and_expire(probe):
    tokens = StreamTokens(derive_key(STREAM_SECRET.encode()), ttl=3600)
    good = tokens.issue("msg-1", "user-7")
    ok = probe.get("/messages/msg-1/stream", params={"stream_token": good})
    assert ok.json() == {"user_id": "user-7", "is_admin": False}

    other = probe.get("/messages/msg-2/stream", params={"stream_token": good})
    assert code_of(other) == (401, "invalid_token")
    expired = StreamTokens(derive_key(STREAM_SECRET.encode()), ttl=-10).issue("msg-1", "user-7")
    late = probe.get("/messages/msg-1/stream", params={"stream_token": expired})
    assert code_of(late) == (401, "token_expired")
    forged = StreamTokens(derive_key(b"another-key" * 4), ttl=3600).issue("msg-1", "user-7")
    assert code_of(probe.get("/messages/msg-1/stream", params={"stream_token": forged})) == (
        401,
        "invalid_token",
    )
    # Without a stream token the user's own token works (a client resuming by message id).
    resumed = probe.get("/messages/msg-1/stream", params={"access_token": token(SECRET, "HS256")})
    assert resumed.json()["user_id"] == USER


def test_a_stream_token_is_no_user_token_even_when_derived_from_the_jwt_secret(api):
    # No STREAM_TOKEN_SECRET in `api`'s settings: its stream key is derived from SECRET.
    stream_token = StreamTokens(derive_key(SECRET.encode()), ttl=3600).issue("msg-1", USER)
    assert me(api, stream_token).json()["error"]["code"] == "invalid_token"
