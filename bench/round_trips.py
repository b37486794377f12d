"""`python -m bench.round_trips`: the PostgreSQL round trips of one turn at production shape,
counted on the wire rather than timed (a shared machine's timings are noise; a count is not).

Ours runs as `python -m bench --profile production` runs it (APP_ENV=production, a JWT per
request, every spend limit and LIMIT_USER_RPM set and never reached, /metrics and JSON logs),
its DATABASE_URL pointing at a TCP proxy in front of PostgreSQL that counts what the server
sends: each Sync (the extended query protocol asyncpg speaks: Parse/Bind/Execute, then Sync)
and each simple Query (BEGIN, COMMIT) is one round trip, as the client then waits for the
server's ReadyForQuery. Its OPENROUTER_BASE_URL points at a second proxy, in front of the fake
upstream, which notes that count when a chat completion request arrives. Turns go one at a
time, each in a new conversation, as the bench's do: for each, the round trips from the
request to its upstream request, and from the request to its reply's `done` event. The first
turns warm the pool's connections up (asyncpg prepares each statement once per connection:
one more round trip the first time), and background work (heartbeats, sweeps) can fall into a
turn, so the median over the measured turns is what counts.

    .venv/bin/python -m bench.round_trips --postgres-url postgresql://postgres@127.0.0.1:55432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import struct
import threading
from collections.abc import Callable

import httpx

from bench.postgres import fresh_database
from bench.production import postgres_server, production_settings
from bench.run import HOST, ours_protocol, processes

STARTUP_CODE = 196608  # protocol 3.0: after this untyped message, every one has a type byte


class Proxy:
    """A TCP proxy whose client-to-server bytes go through `watch` (one call per read, in
    order, per connection) on their way."""

    def __init__(self, target: tuple[str, int], watch: Callable[[object, bytes], None]) -> None:
        self.target = target
        self._watch = watch
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = object()  # this connection's, for `watch`
            threading.Thread(target=self._pump, args=(client, server, key), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, key: object | None) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if key is not None:
                    self._watch(key, data)
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


class RoundTrips:
    """Counts the round trips clients make to PostgreSQL: Sync and Query messages."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._buffers: dict[object, tuple[bytearray, bool]] = {}  # per connection: bytes, typed

    def watch(self, key: object, data: bytes) -> None:
        buffer, typed = self._buffers.get(key, (bytearray(), False))
        buffer += data
        while True:
            if not typed:  # SSLRequest, GSSENCRequest, then the StartupMessage: no type byte
                if len(buffer) < 8:
                    break
                length, code = struct.unpack("!II", buffer[:8])
                if len(buffer) < length:
                    break
                del buffer[:length]
                typed = code == STARTUP_CODE
                continue
            if len(buffer) < 5:
                break
            kind, length = buffer[:1], struct.unpack("!I", buffer[1:5])[0]
            if len(buffer) < 1 + length:
                break
            del buffer[: 1 + length]
            if kind in (b"S", b"Q"):
                with self._lock:
                    self.count += 1
        self._buffers[key] = (buffer, typed)


class UpstreamRequests:
    """Notes the round-trip count each time a chat completion request reaches the upstream."""

    def __init__(self, round_trips: RoundTrips) -> None:
        self._round_trips = round_trips
        self.at: list[int] = []

    def watch(self, key: object, data: bytes) -> None:
        if b"POST /api/v1/chat/completions" in data:
            self.at.append(self._round_trips.count)


async def _turns(
    port: int,
    headers: dict[str, str],
    *,
    warm: int,
    turns: int,
    trips: RoundTrips,
    upstream: UpstreamRequests,
) -> tuple[list[int], list[int]]:
    before_upstream, whole = [], []
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as http:
        for n in range(warm + turns):
            start, sent = trips.count, len(upstream.at)
            async with http.stream(
                "POST", "/api/chat", json={"message": "Hello"}, headers=headers
            ) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line == "event: done":
                        break
            if n >= warm:
                before_upstream.append(upstream.at[sent] - start)
                whole.append(trips.count - start)
    return before_upstream, whole


async def main_async(args: argparse.Namespace) -> None:
    with postgres_server(args.postgres_url) as (admin_url, which), processes() as procs:
        async with fresh_database(admin_url, prefix="bench_round_trips") as url:
            database = httpx.URL(url.replace("postgresql://", "http://", 1))
            trips = RoundTrips()
            pg = Proxy((database.host, database.port or 5432), trips.watch)
            upstream = procs.fake_upstream("upstream", tokens=args.tokens, delay=0.001)
            seen = UpstreamRequests(trips)
            relay = Proxy((HOST, upstream.port), seen.watch)
            proxied = url.replace(f"{database.host}:{database.port}", f"{HOST}:{pg.port}", 1)
            settings = {
                **production_settings(),
                "DATABASE_URL": proxied,
                "OPENROUTER_BASE_URL": f"http://{HOST}:{relay.port}/api/v1",
            }
            ours = procs.ours("prod-pg", upstream, auth=True, settings=settings)
            header = ours_protocol(True).headers.strip()
            name, _, value = header.partition(": ")
            before, whole = await _turns(
                ours.port,
                {name: value},
                warm=args.warm,
                turns=args.turns,
                trips=trips,
                upstream=seen,
            )
            print(f"PostgreSQL: {which}; {args.turns} turns after {args.warm} to warm up")
            print(
                f"round trips before the upstream request: median {statistics.median(before)}, "
                f"min {min(before)}, max {max(before)}"
            )
            print(
                f"round trips in all, to the done event: median {statistics.median(whole)}, "
                f"min {min(whole)}, max {max(whole)}"
            )
            pg.close()
            relay.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.round_trips", description=__doc__)
    parser.add_argument("--postgres-url", help="a PostgreSQL server instead of a throwaway one")
    parser.add_argument("--turns", type=int, default=20, help="turns counted (20)")
    parser.add_argument("--warm", type=int, default=10, help="turns first, not counted (10)")
    parser.add_argument("--tokens", type=int, default=5, help="chunks per reply (5)")
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
