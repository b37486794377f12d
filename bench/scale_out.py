"""`python -m bench --processes 2 [--redis]`: two server processes on one database (and one
Redis), as two dynos are.

    follower delay   a reply started on A, followed on A (its owner) and on B at once: how much
                     later each token reaches B's follower than A's (p50, p99). Without Redis,
                     B serves it from checkpoints: the delay is CHECKPOINT_INTERVAL's order.
    cpu per reply    A's CPU per reply under load, Redis against none (what publishing costs)
    replies/s        the same load on A alone, then split over A and B

Each configuration gets fresh processes; the load driver is `bench.run`'s. With `--rounds N`,
each configuration runs N times in alternating order, pooled. With `--auth`, both
servers verify a user's JWT on every request (and share the stream tokens' key, as production
needs); with `--reasoning`, the fake upstream thinks first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.dev.threaded_server import free_port
from bench.run import (
    HOST,
    Protocol,
    Result,
    Server,
    drive,
    measure,
    ours_protocol,
    pooled,
    processes,
    quantile,
)

STREAM_TOKEN_SECRET = "bench-stream-token-secret-of-both-processes"


@contextlib.contextmanager
def throwaway_redis(workdir: Path) -> Iterator[str]:
    """A redis-server on loopback, without persistence, for one configuration."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis needs redis-server (apt-get install redis-server)")
    port = free_port(HOST)
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                break
            time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0"
    finally:
        server.kill()
        server.wait()


@contextlib.asynccontextmanager
async def _request(
    port: int, head: str, body: bytes = b""
) -> AsyncIterator[tuple[asyncio.StreamReader, bytes]]:
    """The reader of a response and its head; the connection is closed on exit (kept open
    till then: a dropped StreamWriter closes it)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(head.encode() + body)
        yield reader, await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def start_reply(port: int, protocol: Protocol) -> str:
    """POST /api/chat/messages on `port`, as `protocol`'s user: the stream URL of the reply it
    starts (its stream token is good on either process)."""
    body = json.dumps({"message": "Tell me about benchmarks"}).encode()
    head = (
        f"POST /api/chat/messages HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json"
        f"\r\n{protocol.headers}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    async with _request(port, head, body) as (reader, headers):
        assert headers.startswith(b"HTTP/1.1 202"), headers
        return json.loads(await reader.read())["stream_url"]


# An event's id line; after a chunk-size line of the chunked encoding too ("\r\n4f\r\nid: 5").
EVENT_ID = re.compile(rb"\nid: (\d+)\n")


async def arrivals(port: int, path: str) -> dict[int, float]:
    """When each event id of a stream arrived (perf_counter), read to its end."""
    head = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    seen: dict[int, float] = {}
    async with _request(port, head) as (reader, headers):
        assert headers.startswith(b"HTTP/1.1 200"), headers
        data, scanned = b"\n", 0
        while chunk := await reader.read(65536):
            now = time.perf_counter()
            data += chunk
            for match in EVENT_ID.finditer(data, max(0, scanned - 32)):
                seen.setdefault(int(match[1]), now)
            scanned = len(data)
            if b"event: done" in data[-4096:] or b"event: error" in data[-4096:]:
                break
    return seen


async def follower_delays(a: Server, b: Server, protocol: Protocol, *, replies: int) -> list[float]:
    """Per token, seconds from A's follower getting it to B's, over `replies` replies."""
    delays: list[float] = []
    for _ in range(replies):
        path = await start_reply(a.port, protocol)
        on_a, on_b = await asyncio.gather(arrivals(a.port, path), arrivals(b.port, path))
        attached = min(on_b.values())  # what came before B's follower was there, came at once
        delays += [on_b[i] - t for i, t in on_a.items() if i in on_b and t > attached]
    return delays


@dataclass
class Split:
    """The load split over A and B: replies, the wall time of the longer half, both CPUs."""

    good: int
    elapsed: float
    cpu: float
    errors: int

    def __add__(self, other: Split) -> Split:
        return Split(
            self.good + other.good,
            self.elapsed + other.elapsed,
            self.cpu + other.cpu,
            self.errors + other.errors,
        )


@dataclass
class Outcome:
    delays: list[float]
    one: dict[int, Result]  # by level: the load on A alone
    two: dict[int, Split]  # by level: the same load over A and B


def pooled_outcome(outcomes: list[Outcome]) -> Outcome:
    levels = outcomes[0].one
    return Outcome(
        [delay for outcome in outcomes for delay in outcome.delays],
        {level: pooled([outcome.one[level] for outcome in outcomes]) for level in levels},
        {
            level: sum((o.two[level] for o in outcomes[1:]), outcomes[0].two[level])
            for level in levels
        },
    )


async def configuration(args: argparse.Namespace, *, redis: bool) -> Outcome:
    time_limit = 60.0 + args.tokens * args.delay
    with processes() as procs, contextlib.ExitStack() as stack:
        upstream = procs.fake_upstream(
            "upstream", tokens=args.tokens, delay=args.delay, reasoning=args.reasoning
        )
        protocol = ours_protocol(args.auth)
        settings = {
            "DATABASE_URL": f"sqlite:///{procs.workdir / 'shared'}.db",
            # The stream_url's token is checked by whichever process it reaches: one key for
            # both (without --auth, each would make a random one of its own).
            "STREAM_TOKEN_SECRET": STREAM_TOKEN_SECRET,
        }
        if redis:
            settings["REDIS_URL"] = stack.enter_context(throwaway_redis(procs.workdir))
        a = procs.ours("ours-a", upstream, auth=args.auth, settings=settings)
        b = procs.ours("ours-b", upstream, auth=args.auth, settings=settings)
        outcome = Outcome(await follower_delays(a, b, protocol, replies=3), {}, {})
        for level in args.levels:
            outcome.one[level] = await measure(
                a, protocol, level=level, duration=args.duration, time_limit=time_limit
            )
            cpu = a.cpu_seconds() + b.cpu_seconds()
            split = [(a, max(1, level // 2)), (b, max(1, level - level // 2))]
            both = await asyncio.gather(
                *(
                    drive(
                        server.ports,
                        protocol,
                        concurrency=streams,
                        duration=args.duration,
                        time_limit=time_limit,
                    )
                    for server, streams in split
                )
            )
            cpu = a.cpu_seconds() + b.cpu_seconds() - cpu
            samples = [sample for run, _ in both for sample in run]
            good = sum(sample.ok for sample in samples)
            outcome.two[level] = Split(
                good, max(elapsed for _, elapsed in both), cpu, len(samples) - good
            )
        return outcome


async def main_async(args: argparse.Namespace) -> list[str]:
    # `--rounds N`: each configuration N times, in alternating order, pooled (a machine that
    # drifts weighs on both alike).
    labels = ["database", "redis"] if args.redis else ["database"]
    runs: dict[str, list[Outcome]] = {label: [] for label in labels}
    for round_ in range(args.rounds):
        for label in labels[:: -1 if round_ % 2 else 1]:
            runs[label].append(await configuration(args, redis=label == "redis"))
    outcomes = {label: pooled_outcome(runs[label]) for label in labels}
    lines = []
    for label, outcome in outcomes.items():
        lines.append(
            f"{label:<9} follower delay per token: "
            f"p50 {1000 * quantile(outcome.delays, 0.5):.2f} ms, "
            f"p99 {1000 * quantile(outcome.delays, 0.99):.2f} ms ({len(outcome.delays)} tokens)"
        )
        for level, one in outcome.one.items():
            two = outcome.two[level]
            rate, cpu, errors = (
                two.good / two.elapsed,
                1000 * two.cpu / max(1, two.good),
                two.errors,
            )
            lines.append(
                f"{label:<9} level {level:>4}: one process {one.replies_per_s:.1f} replies/s, "
                f"{one.cpu_ms_per_reply:.2f} cpu ms/reply, {one.errors} errors; two processes "
                f"{rate:.1f} replies/s (x{rate / max(one.replies_per_s, 1e-9):.2f}), "
                f"{cpu:.2f} cpu ms/reply, {errors} errors"
            )
    if "redis" in outcomes:
        for level in args.levels:
            with_redis = outcomes["redis"].one[level].cpu_ms_per_reply
            without = outcomes["database"].one[level].cpu_ms_per_reply
            lines.append(
                f"level {level}: owner's cpu per reply with Redis x{with_redis / without:.2f} "
                "of without"
            )
    return lines
