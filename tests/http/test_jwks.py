"""The JWKS cache against a real JWKS endpoint over HTTP: rotation, the refetch limit, outages.

The clock is the cache's own (`clock=`), moved by hand: a minute of rate limit is tested
without waiting a minute.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from app.dev.threaded_server import free_port
from app.http.auth.errors import AuthUnavailable, Unauthorized
from app.http.auth.jwks import MAX_JWKS_BYTES, RETRY_WHEN_EMPTY, JwksCache
from app.upstream.pool import ClientPool
from tests.http.identity_support import (
    EC_KEY,
    ED_KEY,
    RSA_KEY,
    JwksServer,
    public_jwk,
    serve_jwks,
)
from tests.support import run_async

ASYMMETRIC = ("RS256", "ES256", "EdDSA")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with serve_jwks() as server:
        yield server


def with_cache(url: str, clock: Clock, scenario, *, timeout: float = 2) -> None:
    async def run() -> None:
        pool = ClientPool(size=1, timeout=5)
        try:
            cache = JwksCache(pool, url, algorithms=ASYMMETRIC, timeout=timeout, clock=clock)
            await scenario(cache)
        finally:
            await pool.aclose()

    run_async(run())


async def refused(cache: JwksCache, kid: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        await cache.key(kid)
    return caught.value.code


def test_keys_are_cached_refetched_on_rotation_at_most_once_a_minute(jwks):
    clock = Clock()
    jwks.keys = [public_jwk(RSA_KEY, "RS256", "k1")]

    async def scenario(cache: JwksCache) -> None:
        assert (await cache.key("k1")).algorithm_name == "RS256"
        for _ in range(5):
            await cache.key("k1")
        assert jwks.requests == 1, "a known kid never touches the network"

        # The host app rotates: k2 appears. A token naming it a minute on is served at once.
        jwks.keys = [public_jwk(RSA_KEY, "RS256", "k1"), public_jwk(EC_KEY, "ES256", "k2")]
        clock.now += 60
        assert (await cache.key("k2")).algorithm_name == "ES256"
        assert jwks.requests == 2

        # Unknown kids right after: refused without asking again, however many come.
        for n in range(10):
            assert await refused(cache, f"forged-{n}") == "invalid_token"
        assert jwks.requests == 2

        # A key added now is only seen once the minute since the last fetch has passed.
        jwks.keys.append(public_jwk(ED_KEY, "EdDSA", "k3"))
        clock.now += 30
        assert await refused(cache, "k3") == "invalid_token"
        assert jwks.requests == 2
        clock.now += 30
        assert (await cache.key("k3")).algorithm_name == "EdDSA"
        assert jwks.requests == 3

    with_cache(jwks.url, clock, scenario)


def test_cached_keys_keep_verifying_while_the_jwks_is_down_and_withdrawn_keys_stop(jwks):
    clock = Clock()
    jwks.keys = [public_jwk(RSA_KEY, "RS256", "k1"), public_jwk(EC_KEY, "ES256", "k2")]

    async def scenario(cache: JwksCache) -> None:
        await cache.key("k1")
        jwks.up = False
        clock.now += 60
        assert await refused(cache, "new") == "invalid_token"  # asked, got a 503
        assert jwks.requests == 2
        assert (await cache.key("k1")).algorithm_name == "RS256"
        assert (await cache.key("k2")).algorithm_name == "ES256"

        # Back up, without k1: the next fetch drops it.
        jwks.up = True
        jwks.keys = [public_jwk(EC_KEY, "ES256", "k2")]
        clock.now += 60
        assert await refused(cache, "new") == "invalid_token"
        assert await refused(cache, "k1") == "invalid_token"
        assert (await cache.key("k2")).algorithm_name == "ES256"

    with_cache(jwks.url, clock, scenario)


def test_never_fetched_and_unreachable_is_503_then_retried_within_seconds(jwks):
    clock = Clock()
    jwks.up = False
    jwks.keys = [public_jwk(RSA_KEY, "RS256", "k1")]

    async def scenario(cache: JwksCache) -> None:
        with pytest.raises(AuthUnavailable) as caught:
            await cache.key("k1")
        assert (caught.value.status, caught.value.code) == (503, "auth_unavailable")
        with pytest.raises(AuthUnavailable):
            await cache.key("k1")
        assert jwks.requests == 1, "no second fetch before RETRY_WHEN_EMPTY"
        jwks.up = True
        clock.now += RETRY_WHEN_EMPTY
        assert (await cache.key("k1")).algorithm_name == "RS256"

    with_cache(jwks.url, clock, scenario)


def test_a_jwks_nobody_listens_on_is_503():
    async def scenario(cache: JwksCache) -> None:
        with pytest.raises(AuthUnavailable):
            await cache.key("k1")

    with_cache(f"http://127.0.0.1:{free_port()}/jwks.json", Clock(), scenario)


def test_a_jwks_never_supplies_hmac_secrets_nor_non_signing_keys(jwks):
    secret = base64.urlsafe_b64encode(b"x" * 32).rstrip(b"=").decode()
    jwks.keys = [
        {"kty": "oct", "k": secret, "kid": "shared", "alg": "HS256"},
        {**public_jwk(EC_KEY, "ES256", "enc"), "use": "enc"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        public_jwk(RSA_KEY, "RS256", "k1"),
    ]

    async def scenario(cache: JwksCache) -> None:
        for kid in ("shared", "enc", "broken"):
            assert await refused(cache, kid) == "invalid_token"
        assert (await cache.key("k1")).algorithm_name == "RS256"
        # One usable key: a token without a kid is unambiguous.
        assert (await cache.key(None)).algorithm_name == "RS256"

    with_cache(jwks.url, Clock(), scenario)


def test_a_jwks_that_drips_its_document_is_given_up_at_the_total_deadline(jwks):
    # 40 bytes every 0.1 s: each read comes well within the timeout, the whole document (3 s
    # of dripping) does not. A per-read timeout waited it out; the deadline is for the whole
    # fetch, and a request waiting on it gets 503 instead of hanging with it.
    jwks.keys = [public_jwk(RSA_KEY, "RS256", "k1")]
    jwks.padding, jwks.drip_chunk, jwks.drip_every = 1200, 40, 0.1

    async def scenario(cache: JwksCache) -> None:
        with pytest.raises(AuthUnavailable):
            await cache.key("k1")

    with_cache(jwks.url, Clock(), scenario, timeout=1)


def test_a_jwks_document_past_the_size_cap_is_not_read_whole(jwks):
    jwks.keys = [public_jwk(RSA_KEY, "RS256", "k1")]
    jwks.padding, jwks.drip_chunk = MAX_JWKS_BYTES + 1, 64 * 1024

    async def scenario(cache: JwksCache) -> None:
        with pytest.raises(AuthUnavailable):
            await cache.key("k1")
        jwks.padding = 0  # the same keys, in a document of a usual size
        cache_clock.now += RETRY_WHEN_EMPTY
        assert (await cache.key("k1")).algorithm_name == "RS256"

    cache_clock = Clock()
    with_cache(jwks.url, cache_clock, scenario)
