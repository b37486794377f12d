"""The upstream side alone: CPU per reply of reading streams from the fake upstream, serving no one.

    .venv/bin/python -m bench.client                      # 50 concurrent streams, 8 s per reader
    .venv/bin/python -m bench.client --streams 200 --duration 8

Two readers, one after the other, both in this process and on the app's `ClientPool`, in front
of the same fake upstream (its own process): `raw` reads each response's bytes (`aiter_raw`,
what the pass-through does) and `openrouter` runs `OpenRouterClient.stream_chat` (SSE decoding,
JSON, typed events: what our server does). `raw` is the part of every proxy's CPU per reply
that comes with httpx itself; the difference between the two is our parsing. Compare them with
the servers' CPU per reply in `python -m bench` to see how much of it is the upstream side.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from app.upstream.openrouter import OpenRouterClient
from app.upstream.pool import ClientPool
from bench.run import HOST, MESSAGE, processes

BODY = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": MESSAGE}]}


def openrouter_client(pool: ClientPool, base_url: str) -> OpenRouterClient:
    return OpenRouterClient(
        pool, base_url=base_url, api_key="bench-not-a-real-key", app_url="x", app_title="bench"
    )


def readers(base_url: str, pool: ClientPool) -> dict[str, Callable[[], Awaitable[None]]]:
    client = openrouter_client(pool, base_url)

    async def raw() -> None:
        body = {**BODY, "stream": True}
        async with pool.stream("POST", f"{base_url}/chat/completions", json=body) as response:
            async for _ in response.aiter_raw():
                pass

    async def openrouter() -> None:
        async for _ in client.stream_chat(BODY):
            pass

    return {"raw": raw, "openrouter": openrouter}


async def measure(read: Callable[[], Awaitable[None]], *, streams: int, duration: float) -> str:
    await asyncio.gather(*(read() for _ in range(streams)))  # warm-up: open the connections
    replies = 0

    async def worker(deadline: float) -> None:
        nonlocal replies
        while time.perf_counter() < deadline:
            await read()
            replies += 1

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(start + duration) for _ in range(streams)))
    cpu = time.process_time() - cpu
    return f"{replies} replies, {1000 * cpu / max(1, replies):.2f} cpu ms/reply"


async def main_async(args: argparse.Namespace) -> None:
    with processes() as procs:
        upstream = procs.fake_upstream("upstream", tokens=args.tokens, delay=args.delay)
        base_url = f"http://{HOST}:{upstream.port}/api/v1"
        pool = ClientPool(timeout=60.0)
        try:
            for name, read in readers(base_url, pool).items():
                result = await measure(read, streams=args.streams, duration=args.duration)
                print(f"{name:<11} {args.streams} streams: {result}", flush=True)
        finally:
            await pool.aclose()


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The options of the streams `measure` reads: how many at once, how long, for how long."""
    parser.add_argument("--streams", type=int, default=50, help="concurrent streams (50)")
    parser.add_argument("--tokens", type=int, default=50, help="upstream chunks per reply (50)")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds between chunks")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measure (8)")


def run_like_the_server(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # the loop our server runs on (uvicorn picks it when installed)
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.client", description=__doc__.split("\n")[0]
    )
    add_load_options(parser)
    run_like_the_server(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
