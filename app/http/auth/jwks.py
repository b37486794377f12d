"""The host app's public keys: fetched from AUTH_JWKS_URL, cached, refetched when they rotate.

Verifying runs on every request, so a known `kid` is a dict lookup returning the key object PyJWT
built from the JWK once (building one costs 10-15 µs, a tenth of a whole verification, timed by hand
with timeit; `python -m bench --auth` measures verification's cost per reply), and the network is
only touched when a token names a `kid` we do not hold:

- at most once per `refetch_interval` (a minute), however many tokens name unknown kids, so a
  stream of forged kids cannot make us hammer the host app's JWKS endpoint;
- while no key is held at all (the first fetch failed), every `RETRY_WHEN_EMPTY` seconds, so
  one failed fetch at start-up does not lock every user out for a minute;
- a failed fetch (endpoint down, bad JSON, no usable key) keeps the keys already held: tokens
  signed with them go on verifying. Only when none was ever fetched is the answer 503.

A successful fetch replaces the set, so a key the host app withdrew stops verifying at the
next fetch. Keys whose algorithm is not in the allow-list (HMAC `oct` keys above all: a JWKS
must never be a source of shared secrets) are skipped, as are keys not meant for signatures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import httpx
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from app.http.auth.errors import AuthUnavailable, invalid_token
from app.upstream.pool import ClientPool

log = logging.getLogger(__name__)

REFETCH_INTERVAL = 60.0
RETRY_WHEN_EMPTY = 5.0
# A JWKS is a few keys, a few KB (Supabase's, Auth0's, Google's: under 10 KB); a document
# past this is not one, and is not read further into memory.
MAX_JWKS_BYTES = 1024 * 1024


class JwksCache:
    def __init__(
        self,
        http: ClientPool,
        url: str,
        *,
        algorithms: Collection[str],
        timeout: float,
        refetch_interval: float = REFETCH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http, self.url, self._algorithms = http, url, frozenset(algorithms)
        # httpx's timeout bounds each connect and each read; `_deadline` the whole fetch, so a
        # server dripping its document a few bytes at a time cannot hold it (and every token
        # waiting on it, behind `_lock`) for longer.
        self._timeout = httpx.Timeout(timeout)
        self._deadline = timeout
        self._refetch_interval, self._clock = refetch_interval, clock
        self._keys: dict[str | None, PyJWK] = {}
        self._last_attempt: float | None = None
        # One fetch at a time: a burst of tokens with a new kid waits on one request.
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> PyJWK:
        key = self._lookup(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._lookup(kid)  # another request may have fetched while this one waited
            if key is None and self._may_fetch():
                await self._fetch()
                key = self._lookup(kid)
        if key is not None:
            return key
        if not self._keys:
            raise AuthUnavailable()
        raise invalid_token("the token is signed with a key the server does not know")

    def _lookup(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            # A token without a kid is only unambiguous against a set of one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _may_fetch(self) -> bool:
        if self._last_attempt is None:
            return True
        wait = self._refetch_interval if self._keys else RETRY_WHEN_EMPTY
        return self._clock() - self._last_attempt >= wait

    async def _fetch(self) -> None:
        self._last_attempt = self._clock()
        try:
            async with asyncio.timeout(self._deadline):
                document = await self._download()
            keys = self._usable_keys(json.loads(document))
        except (httpx.HTTPError, ValueError, TimeoutError, RecursionError) as exc:
            log.warning(
                "JWKS fetch from %s failed (%s); keeping the %d key(s) held",
                self.url,
                type(exc).__name__,
                len(self._keys),
            )
            return
        self._keys = keys
        log.info("JWKS fetched from %s: %d usable key(s)", self.url, len(keys))

    async def _download(self) -> bytes:
        """The JWKS document's bytes, refused past MAX_JWKS_BYTES before more are read."""
        async with self._http.stream(
            "GET", self.url, timeout=self._timeout, headers={"Accept": "application/json"}
        ) as response:
            response.raise_for_status()
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_JWKS_BYTES:
                raise ValueError("the JWKS document is too large")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("the JWKS document is too large")
            return bytes(body)

    def _usable_keys(self, document: Any) -> dict[str | None, PyJWK]:
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("the JWKS has no `keys` list")
        keys: dict[str | None, PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = PyJWK(entry)
            except (PyJWTError, KeyError, TypeError, ValueError):
                continue  # a key this PyJWT cannot use, or a malformed one: the others still work
            if key.algorithm_name in self._algorithms:
                keys[entry.get("kid")] = key
        if not keys:
            raise ValueError("the JWKS has no key for an accepted algorithm")
        return keys
