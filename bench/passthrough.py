"""The floor: a minimal proxy that relays the upstream's raw bytes and does nothing else.

    python -m bench.passthrough --port 9002 --upstream http://127.0.0.1:9001/api/v1 --clients 16

`--clients 1` is the single shared `httpx.AsyncClient` whose pool bookkeeping is the trap that
`app.upstream.pool` avoids; any other number uses the same client pool as our server.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from app.upstream.pool import ClientPool


def build(upstream: str, clients: int) -> Starlette:
    pool = ClientPool(size=clients, timeout=60.0)
    url = f"{upstream.rstrip('/')}/chat/completions"

    async def relay(body: dict) -> AsyncIterator[bytes]:
        async with pool.stream("POST", url, json=body) as response:
            async for chunk in response.aiter_raw():
                yield chunk

    async def chat(request: Request) -> StreamingResponse:
        message = (await request.json())["message"]
        body = {
            "model": "openai/gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": message}],
        }
        return StreamingResponse(relay(body), media_type="text/event-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await pool.aclose()

    return Starlette(routes=[Route("/api/chat", chat, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://host:port/api/v1")
    parser.add_argument("--clients", type=int, default=16, help="httpx clients in the pool (16)")
    args = parser.parse_args()
    app = build(args.upstream, args.clients)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
