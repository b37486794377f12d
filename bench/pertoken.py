"""What the relay costs per token, in CPU, independent of the machine's load: a fixed workload.

    .venv/bin/python -m bench.pertoken                    # 50 and 10 tokens, 200 replies, best of 7
    .venv/bin/python -m bench.pertoken --tokens 100 --replies 400 --repeat 9
    .venv/bin/python -m bench.pertoken --profile          # cProfile of the 50-token workload
    .venv/bin/python -m bench.pertoken --text 'héllo ✓ '  # another token text (non-ASCII)

A reply's upstream bytes are recorded once from the simulator (`app/dev/simulator.py`, what
`bench.fake_upstream` serves: a role chunk, N content chunks with OpenRouter's comments, the
finish, the usage, [DONE]), then replayed through the relay path in this process, each SSE
event as one read with a turn of the event loop between (as chunks 10 ms apart arrive):
httpx's response stream (an in-memory transport: no socket), httpx-sse, `stream_chat`'s
decoding, `Attempts._stream` into the draft and the log, one follower (`ReplyLog.follow`)
and the SSE response's frames (`app.http.sse._frames`). What is left out is a reply's fixed
cost and I/O: the turn's write and checkpoints (spawned, never run: persistence is off the
relay path), the sockets, uvicorn, sse-starlette.

Timed with `time.process_time()` (this process's CPU, whatever else the machine runs), the
best of `--repeat` runs of `--replies` replies one after another. Per token is the
difference between two token counts, divided by the difference in tokens: what each token
adds, with the per-reply part taken out. On a loaded machine the best of several repeats is
what to compare; `valgrind --tool=callgrind` of the same command counts instructions instead
(docs/benchmarks.md, "Per token").
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import subprocess
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx

from app.admission.turn_write import TurnWrite
from app.core.outage import Outage
from app.core.run_request import RunRequest
from app.dev.simulator import Behaviour, FakeOpenRouter
from app.http.sse import _frames
from app.replies.attempts import Attempts, RetryPolicy
from app.replies.draft import Draft
from app.replies.log import ReplyLog
from app.replies.writer import ReplyWriter
from app.upstream.openrouter import OpenRouterClient
from bench.client import run_like_the_server

BASE_URL = "http://upstream.invalid/api/v1"
REQUEST = RunRequest(
    message_id="0123456789abcdef0123456789abcdef",
    conversation_id="c",
    user_message_id="u",
    user_id="bench",
    agent="chat",
    model="openai/gpt-4o",
    fallback_models=(),
    temperature=0.7,
    max_tokens=1000,
    messages=[{"role": "user", "content": "hi"}],
)


async def record(tokens: int, text: str, reasoning: int = 0) -> list[bytes]:
    """The simulator's streamed body for a reply of `tokens` chunks, one SSE event each."""
    fake = FakeOpenRouter(
        default=Behaviour(
            tokens=[f"{text}{i}" for i in range(tokens)],
            reasoning=[f" thought{i}" for i in range(reasoning)],
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app)) as client:
        response = await client.post(
            f"{BASE_URL}/chat/completions",
            json={"model": REQUEST.model, "messages": REQUEST.messages, "stream": True},
        )
    pieces = response.content.split(b"\n\n")
    assert pieces[-1] == b"", "the body ends with a whole event"
    return [piece + b"\n\n" for piece in pieces[:-1]]


class Replayed(httpx.AsyncByteStream):
    """The recorded events, one read each, with a turn of the loop between."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            await asyncio.sleep(0)
            yield piece


def upstream(pieces: list[bytes]) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Replayed(pieces)
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def _not_run(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    """A run's `spawn` here: the turn's write and checkpoints are not part of the relay path."""
    coroutine.close()
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


async def _written() -> bool:
    return True


async def one_reply(client: OpenRouterClient) -> int:
    """A reply through the relay path; the bytes its follower would send."""
    reply_log = ReplyLog(ping_interval=3600)
    draft = Draft()
    writer = ReplyWriter(
        REQUEST,
        turn=TurnWrite(_written),  # type: ignore[arg-type]
        draft=draft,
        log=reply_log,
        store=None,  # type: ignore[arg-type]  # nothing is written here
        spawn=_not_run,
        reconcile=lambda **_: None,
        checkpoint_interval=3600,
        on_turn_lost=lambda: None,
        outage=Outage("bench"),
        final_write_patience=0,
    )
    attempts = Attempts(
        REQUEST,
        client=client,
        retry=RetryPolicy(max_retries=0, base_delay=0, budget=0),
        draft=draft,
        log=reply_log,
        writer=writer,
    )
    reply_log.append(*_meta())

    async def follow() -> int:
        sent = 0
        batches = reply_log.follow(0, ready=_written, on_followers=lambda _: None)
        async for frame in _frames(batches, None, None):
            sent += len(frame)
        return sent

    follower = asyncio.create_task(follow())
    await attempts.run()
    reply_log.finish(*_done())
    return await follower


def _meta() -> tuple[Any, dict[str, Any]]:
    from app.replies.wire import Event, meta_payload

    return Event.META, meta_payload(
        conversation_id="c", message_id=REQUEST.message_id, user_message_id="u", agent="chat",
        model=REQUEST.model,
    )  # fmt: skip


def _done() -> tuple[Any, dict[str, Any]]:
    from app.replies.wire import Event

    return Event.DONE, {"message_id": REQUEST.message_id, "status": "complete"}


async def cpu_per_reply(pieces: list[bytes], *, replies: int, repeat: int) -> float:
    """The best of `repeat` runs: CPU seconds per reply."""
    client = OpenRouterClient(
        upstream(pieces), base_url=BASE_URL, api_key="bench", app_url="x", app_title="bench"
    )
    await one_reply(client)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(replies):
            await one_reply(client)
        best = min(best, (time.process_time() - start) / replies)
    return best


def _callgrind(*options: str) -> None:
    subprocess.run(
        ["callgrind_control", *options, str(os.getpid())], check=True, capture_output=True
    )


async def instructions(few: list[bytes], many: list[bytes], args: argparse.Namespace) -> None:
    """Each workload's instructions, counted by callgrind (started with instrumentation off, so
    start-up is not counted): instrumentation on, `--replies` replies, a dump, the other
    workload, a dump. Read the dumps' totals with `callgrind_annotate` (docs/benchmarks.md)."""
    for name, pieces in [("few", few), ("many", many)]:
        client = OpenRouterClient(
            upstream(pieces), base_url=BASE_URL, api_key="bench", app_url="x", app_title="bench"
        )
        await one_reply(client)  # warm-up: first-use caches, not the work of a reply
        _callgrind("--instr=on")
        _callgrind("--zero")
        for _ in range(args.replies):
            await one_reply(client)
        _callgrind(f"--dump={name}")
        _callgrind("--instr=off")


async def main_async(args: argparse.Namespace) -> None:
    many = await record(args.tokens, args.text, args.reasoning)
    few = await record(args.few, args.text, args.reasoning)
    if args.callgrind:
        await instructions(few, many, args)
        return
    if args.profile:
        client = OpenRouterClient(
            upstream(many), base_url=BASE_URL, api_key="bench", app_url="x", app_title="bench"
        )
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.replies):
            await one_reply(client)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(35)
        return
    for name, pieces, tokens in [("few", few, args.few), ("many", many, args.tokens)]:
        per_reply = await cpu_per_reply(pieces, replies=args.replies, repeat=args.repeat)
        print(f"{tokens:>4} tokens: {1e6 * per_reply:8.1f} us CPU per reply", flush=True)
        if name == "few":
            few_cost = per_reply
    per_token = (per_reply - few_cost) / (args.tokens - args.few)
    print(f"per token: {1e6 * per_token:.2f} us CPU ({args.few} -> {args.tokens} tokens)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pertoken", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tokens", type=int, default=50, help="content chunks per reply (50)")
    parser.add_argument("--few", type=int, default=10, help="the short reply's chunks (10)")
    parser.add_argument("--reasoning", type=int, default=0, help="thinking chunks first (0)")
    parser.add_argument("--text", default=" tok", help="each token's text, then its number")
    parser.add_argument("--replies", type=int, default=200, help="replies per timed run (200)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs; the best counts (7)")
    parser.add_argument("--profile", action="store_true", help="cProfile instead of timing")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="under valgrind --tool=callgrind --instr-atstart=no: count instructions instead",
    )
    run_like_the_server(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
