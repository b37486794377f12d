"""Serve the OpenRouter simulator in its own process: the upstream every benchmark target calls.

python -m bench.fake_upstream --port 9001 --tokens 50 --delay 0.01
python -m bench.fake_upstream --port 9001 --reasoning 20   # a reasoning model: thinking first
python -m bench.fake_upstream --port 9001 --server hypercorn   # also HTTP/2 (bench.http2)
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn

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
    args = parser.parse_args()
    tokens = [f" tok{i}" for i in range(args.tokens)]
    reasoning = [f" thought{i}" for i in range(args.reasoning)]
    fake = FakeOpenRouter(default=Behaviour(tokens=tokens, delay=args.delay, reasoning=reasoning))
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
