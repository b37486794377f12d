"""HTTP/2 to the upstream against HTTP/1.1: what it would save, and why the server does not use it.

    .venv/bin/python -m bench.http2
    .venv/bin/python -m bench.http2 --streams 50 --idle 1000 --duration 8

The fake upstream runs under hypercorn (uvicorn does not serve HTTP/2), without TLS, so HTTP/2
is spoken with prior knowledge. This process is the client, on the app's `ClientPool` of 16
clients: once with HTTP/1.1 clients (what the server uses), once with HTTP/2 ones.

- cpu: `OpenRouterClient.stream_chat` at `--streams` concurrent streams, CPU per reply here;
- idle: memory per open stream (tracemalloc), `--idle` streams whose upstream sends one
  chunk, then nothing;
- stop: a reply left after its first event (what the Stop button, a disconnect under
  DISCONNECT_POLICY=cancel or a shutdown do to a run), then the upstream's generation record:
  did the upstream learn that the reply was stopped, and how many tokens does it bill?
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc
from typing import Any

import httpx

from app.upstream.openrouter import Opened, OpenRouterClient
from app.upstream.pool import ClientPool
from bench.client import (
    BODY,
    add_load_options,
    measure,
    openrouter_client,
    readers,
    run_like_the_server,
)
from bench.run import HOST, Processes, processes

TIMEOUT = 60.0


async def client_pool(http2: bool) -> ClientPool:
    pool = ClientPool(timeout=TIMEOUT)
    if http2:
        for client in pool.clients:
            await client.aclose()
        # The same pool, of HTTP/2 clients: each holds one connection for all its streams.
        pool.clients = [
            httpx.AsyncClient(
                timeout=TIMEOUT,
                http1=False,
                http2=True,
                limits=httpx.Limits(max_connections=None),
            )
            for _ in pool.clients
        ]
    return pool


async def idle_kb_per_stream(client: OpenRouterClient, streams: int) -> float:
    async def open_one() -> Any:
        events = client.stream_chat(BODY)
        await anext(events)  # the stream is open and stays so: the upstream sends nothing more
        return events

    held = list(await asyncio.gather(*(open_one() for _ in range(20))))  # warm-up
    # Python's own count of what it holds: RSS would not grow where the cpu measure before
    # left freed memory to reuse (tracemalloc saw ~98% of the server's idle RSS growth).
    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    held += await asyncio.gather(*(open_one() for _ in range(streams)))
    gc.collect()
    per_stream = (tracemalloc.get_traced_memory()[0] - before) / streams / 1024
    tracemalloc.stop()
    for events in held:
        await events.aclose()
    return per_stream


async def stop_after_first_event(client: OpenRouterClient, tokens: int, delay: float) -> str:
    events = client.stream_chat(BODY)
    opened = await anext(events)
    assert isinstance(opened, Opened) and opened.generation_id
    await events.aclose()  # what a cancelled run does: it leaves the stream
    await asyncio.sleep(1.0)
    record = await client.get_generation(opened.generation_id)
    # Still generating (the record is served only once it ends): wait for the reply's end.
    async with asyncio.timeout(tokens * delay + 10):
        while record is None:
            await asyncio.sleep(0.5)
            record = await client.get_generation(opened.generation_id)
    learnt = "yes" if record["cancelled"] else "no"
    return (
        f"upstream learnt of it: {learnt}, {record['tokens_completion']} of {tokens} tokens billed"
    )


async def main_async(args: argparse.Namespace) -> None:
    with processes() as procs:
        for http2 in (False, True):
            name = "HTTP/2" if http2 else "HTTP/1.1"
            await one_protocol(procs, args, http2=http2, name=name)


async def one_protocol(
    procs: Processes, args: argparse.Namespace, *, http2: bool, name: str
) -> None:
    def upstream(label: str, tokens: int, delay: float) -> str:
        server = procs.fake_upstream(label, tokens=tokens, delay=delay, server="hypercorn")
        return f"http://{HOST}:{server.port}/api/v1"

    label = "h2" if http2 else "h1"
    streaming = upstream(f"{label}-upstream", args.tokens, args.delay)
    silent = upstream(f"{label}-silent", 1, 3600.0)
    long = upstream(f"{label}-long", args.stop_tokens, args.delay)
    pool = await client_pool(http2)
    try:
        read = readers(streaming, pool)["openrouter"]
        cpu = await measure(read, streams=args.streams, duration=args.duration)
        print(f"{name:<9} cpu   {args.streams} streams: {cpu}", flush=True)
        idle = await idle_kb_per_stream(openrouter_client(pool, silent), args.idle)
        print(f"{name:<9} idle  {args.idle} streams: {idle:.1f} KB per stream", flush=True)
        stopped = await stop_after_first_event(
            openrouter_client(pool, long), args.stop_tokens, args.delay
        )
        print(f"{name:<9} stop  a reply left after its first event: {stopped}", flush=True)
    finally:
        await pool.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http2", description=__doc__.split("\n")[0]
    )
    add_load_options(parser)
    parser.add_argument("--idle", type=int, default=1000, help="idle streams (1000)")
    parser.add_argument(
        "--stop-tokens", type=int, default=300, help="tokens of the reply that is stopped (300)"
    )
    run_like_the_server(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
