"""Serve the OpenRouter simulator in its own process: the upstream every benchmark target calls.

python -m bench.fake_upstream --port 9001 --tokens 50 --delay 0.01
"""

from __future__ import annotations

import argparse

import uvicorn

from app.simulator import Behaviour, FakeOpenRouter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=50, help="content chunks per reply")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds before each chunk")
    args = parser.parse_args()
    tokens = [f" tok{i}" for i in range(args.tokens)]
    fake = FakeOpenRouter(default=Behaviour(tokens=tokens, delay=args.delay))
    uvicorn.run(
        fake.app,
        host=args.host,
        port=args.port,
        log_level="warning",
        backlog=4096,
        access_log=False,
    )


if __name__ == "__main__":
    main()
