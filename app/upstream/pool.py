"""The HTTP clients that call OpenRouter: a few `httpx.AsyncClient`s used in turn, not one.

Why not one: httpcore's connection pool walks every pooled connection each time a request starts or
ends (encode/httpcore#1035), so one client holding hundreds of open streams spends most of its CPU
on that bookkeeping (`python -m bench`'s `passthrough-1` target against `passthrough`: at 200
concurrent streams a raw pass-through on one client fell from about 200 to under 40 replies/s).
Spreading the requests over several clients keeps each pool, and each walk, short.

Each request goes to the client with the fewest requests in flight, the first one on a tie: at
a few requests at a time they all use the first client and reuse its open connections, where
taking the clients in turn would let each one's connections expire between uses (5 s idle) and
pay a new TCP and TLS handshake, on the way to the first token, for most requests.

`ClientPool` offers the two calls `OpenRouterClient` makes (`stream`, `request`), so callers
treat it like one client.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

# Enough that each pool stays at a handful of connections at a few hundred concurrent streams.
DEFAULT_CLIENTS = 16


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS context for its HTTP clients. Building one parses the CA bundle
    (25 to 60 ms of CPU on a 2-core machine), so each client, and each app a process creates (the
    test suite creates one per test), would otherwise pay that again; an `SSLContext` is safe
    to share between clients, threads and event loops."""
    return httpx.create_ssl_context()


class ClientPool:
    def __init__(self, *, size: int = DEFAULT_CLIENTS, timeout: httpx.Timeout | float) -> None:
        if size < 1:
            raise ValueError("a client pool needs at least one client")
        self.clients = [
            httpx.AsyncClient(
                timeout=timeout, limits=httpx.Limits(max_connections=None), verify=tls_context()
            )
            for _ in range(size)
        ]
        self._in_flight = [0] * size

    @asynccontextmanager
    async def _least_busy(self) -> AsyncIterator[httpx.AsyncClient]:
        index = min(range(len(self.clients)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            yield self.clients[index]
        finally:
            self._in_flight[index] -= 1

    @asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        async with self._least_busy() as client, client.stream(method, url, **kwargs) as response:
            yield response

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async with self._least_busy() as client:
            return await client.request(method, url, **kwargs)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
