"""Serve the OpenRouter simulator in its own process: the upstream every benchmark target calls.

python -m bench.fake_upstream --port 9001 --tokens 50 --delay 0.01
python -m bench.fake_upstream --port 9001 --reasoning 20   # a reasoning model: thinking first
python -m bench.fake_upstream --port 9001 --server hypercorn   # also HTTP/2 (bench.http2)
python -m bench.fake_upstream --port 9001 --directives   # as each message's [[sim ...]] asks

`GET /bench/last-request` says how big the last chat request was (bench.growth: the history a
long conversation sends upstream).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.dev.simulator import Behaviour, FakeOpenRouter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=50, help="content chunks per reply")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds before each chunk")
    parser.add_argument(
        "--reasoning", type=int, default=0, help="reasoning chunks before the content (0)"
    )
    parser.add_argument(
        "--server",
        choices=["uvicorn", "hypercorn"],
        default="uvicorn",
        help="hypercorn serves HTTP/2 too (cleartext, prior knowledge); uvicorn does not",
    )
    parser.add_argument(
        "--directives",
        action="store_true",
        help="reply as the message's [[sim tokens=N delay=S]] asks, else with the simulator's "
        "echo of it (--tokens and --reasoning unused)",
    )
    args = parser.parse_args()
    tokens = [f" tok{i}" for i in range(args.tokens)]
    reasoning = [f" thought{i}" for i in range(args.reasoning)]
    if args.directives:  # a behaviour without tokens follows the directive (simulator.directed)
        fake = FakeOpenRouter(default=Behaviour(delay=args.delay))
    else:
        fake = FakeOpenRouter(
            default=Behaviour(tokens=tokens, delay=args.delay, reasoning=reasoning)
        )
    fake.app.router.routes.append(Route("/bench/last-request", _last_request(fake)))
    if args.server == "hypercorn":
        _serve_hypercorn(fake, args.host, args.port)
        return
    uvicorn.run(
        fake.app,
        host=args.host,
        port=args.port,
        log_level="warning",
        backlog=4096,
        access_log=False,
    )


def _last_request(fake: FakeOpenRouter) -> Any:
    """The last chat request's size: its messages and its body's bytes (0 and 0 before any)."""

    async def last_request(request: Request) -> JSONResponse:
        if not fake.requests:
            return JSONResponse({"messages": 0, "bytes": 0})
        last = fake.requests[-1]
        return JSONResponse(
            {
                "messages": len(last["body"].get("messages") or []),
                "bytes": int(last["headers"].get("content-length", 0)),
            }
        )

    return last_request


def _serve_hypercorn(fake: FakeOpenRouter, host: str, port: int) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.backlog = 4096
    # More than httpcore opens on one connection (100), so the client's limit is the one met.
    config.h2_max_concurrent_streams = 1000
    asyncio.run(serve(fake.app, config))


if __name__ == "__main__":
    main()
