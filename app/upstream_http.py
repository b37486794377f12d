"""The HTTP clients that call OpenRouter: a few `httpx.AsyncClient`s used in turn, not one.

Why not one: httpcore's connection pool walks every pooled connection each time a request
starts or ends (encode/httpcore#1035), so one client holding hundreds of open streams spends
most of its CPU on that bookkeeping (measured in `bench/`: at 200 concurrent streams a raw
pass-through on one client fell from about 200 to under 40 replies/s). Spreading the requests
over several clients keeps each pool, and each walk, short.

`ClientPool` offers the two calls `OpenRouterClient` makes (`stream`, `request`), each on the
next client, so callers treat it like one client.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx

# Enough that each pool stays at a handful of connections at a few hundred concurrent streams.
DEFAULT_CLIENTS = 16


class ClientPool:
    def __init__(self, *, size: int = DEFAULT_CLIENTS, timeout: httpx.Timeout | float) -> None:
        if size < 1:
            raise ValueError("a client pool needs at least one client")
        # One TLS context for all: each client would otherwise load the CA bundle again.
        ssl_context = httpx.create_ssl_context()
        self.clients = [
            httpx.AsyncClient(
                timeout=timeout, limits=httpx.Limits(max_connections=None), verify=ssl_context
            )
            for _ in range(size)
        ]
        self._turn = itertools.cycle(self.clients)

    def next(self) -> httpx.AsyncClient:
        return next(self._turn)

    def stream(self, method: str, url: str, **kwargs: Any):
        return self.next().stream(method, url, **kwargs)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await self.next().request(method, url, **kwargs)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
