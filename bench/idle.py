"""Memory per idle stream alone: ours against the pass-through, and where ours goes.

    .venv/bin/python -m bench.idle                     # 1,000 streams each, RSS per stream
    .venv/bin/python -m bench.idle --streams 500 --trace   # and where ours goes, by file
    .venv/bin/python -m bench.idle --auth --ops        # JWT auth, metrics, JSON logs on

The same measure as `python -m bench`'s idle test (`bench.run.idle_memory`: VmRSS growth over N
open streams whose upstream sends its first chunk and then nothing), without the load levels
before it. Memory does not depend on the machine's load: a single run is a figure.

With `--trace`, ours runs again (`python -m bench.idle --serve-traced`, which serves as `python
-m app serve` does) and, once warmed up, traces its allocations and writes a snapshot on
SIGUSR1: one before the streams open, one while they are open; the difference is listed by file, per
stream (tracemalloc sees ~98% of the RSS growth: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.client import run_like_the_server
from bench.run import (
    PASSTHROUGH,
    Server,
    idle_memory,
    ops_settings,
    ours_protocol,
    processes,
)

SNAPSHOT_ENV = "BENCH_TRACEMALLOC_SNAPSHOT"
# Opening the streams can take minutes on a loaded machine: past the read timeout (60 s), a
# silent upstream call is retried, and the stream is no longer an idle one.
PATIENT = {"UPSTREAM_READ_TIMEOUT": "3600"}


def serve_traced() -> None:
    """`python -m app serve` that dumps a tracemalloc snapshot to $BENCH_TRACEMALLOC_SNAPSHOT on
    each SIGUSR1 (renamed once whole: never read half written). Tracing starts at the first:
    tracing start-up would slow it past the bench's start limit on a loaded machine, and what
    is measured is what is allocated, and still held, between two snapshots."""
    path = Path(os.environ[SNAPSHOT_ENV])

    def dump(*_: object) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(8)
        partial = path.with_suffix(".partial")
        tracemalloc.take_snapshot().dump(str(partial))
        partial.rename(path)

    signal.signal(signal.SIGUSR1, dump)
    from app.commands.cli import main

    sys.argv = ["app", "serve"]
    sys.exit(main())


def _snapshot(pid: int, path: Path) -> tracemalloc.Snapshot:
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(600):  # the dump of a big heap takes a few seconds
        if path.exists():
            return tracemalloc.Snapshot.load(str(path))
        time.sleep(0.1)
    raise RuntimeError("no snapshot from the traced server")


async def snapshot(server: Server, path: Path) -> tracemalloc.Snapshot:
    """The traced server's heap now (in a thread: the open streams' loop stays free)."""
    return await asyncio.to_thread(_snapshot, server.process.pid, path)


async def traced(args: argparse.Namespace, upstream: Server, procs: object) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as workdir:
        path = Path(workdir) / "snapshot"
        server = procs.ours(  # type: ignore[attr-defined]
            "ours-traced",
            upstream,
            auth=args.auth,
            settings={**ops_settings(args), **PATIENT, SNAPSHOT_ENV: str(path)},
            serve=("-m", "bench.idle", "--serve-traced"),
        )
        protocol = ours_protocol(args.auth)
        await idle_memory(server, protocol, streams=20, time_limit=args.time_limit)  # warm-up
        before = await snapshot(server, path)
        opened: list[asyncio.StreamWriter] = []
        try:
            await open_streams(server, protocol, args.streams, opened)
            after = await snapshot(server, path)
        finally:
            for writer in opened:
                writer.close()
    stats = after.compare_to(before, "filename")
    total = sum(stat.size_diff for stat in stats)
    print(f"\ntracemalloc, ours, {args.streams} streams: {total / args.streams / 1024:.1f} KB each")
    for stat in stats[: args.top]:
        name = stat.traceback[0].filename
        short = name.split("site-packages/")[-1].split("/lib/python3")[-1]
        kb = stat.size_diff / args.streams / 1024
        count = stat.count_diff / args.streams
        print(f"  {kb:6.2f} KB {count:6.1f} blocks  {short}")
    print("by line:")
    for stat in after.compare_to(before, "lineno")[: args.top]:
        frame = stat.traceback[0]
        short = frame.filename.split("site-packages/")[-1].split("/lib/python3")[-1]
        kb = stat.size_diff / args.streams / 1024
        print(
            f"  {kb:6.2f} KB {stat.count_diff / args.streams:6.1f} blocks  {short}:{frame.lineno}"
        )
    if args.tracebacks:
        print("by traceback (innermost first):")
        for stat in after.compare_to(before, "traceback")[: args.tracebacks]:
            print(f"  {stat.size_diff / args.streams / 1024:6.2f} KB")
            for frame in stat.traceback:
                short = frame.filename.split("site-packages/")[-1].split("/lib/python3")[-1]
                print(f"      {short}:{frame.lineno}")


async def open_streams(
    server: Server, protocol: object, streams: int, opened: list[asyncio.StreamWriter]
) -> None:
    from bench.run import HOST, _first_bytes

    for start in range(0, streams, 100):
        batch = [
            asyncio.open_connection(HOST, server.port)
            for _ in range(start, min(streams, start + 100))
        ]
        for reader, writer in await asyncio.gather(*batch):
            writer.write(protocol.request(server.port))  # type: ignore[attr-defined]
            opened.append(writer)
            if not await _first_bytes(reader):
                raise RuntimeError("an idle stream did not start")


async def main_async(args: argparse.Namespace) -> None:
    with processes() as procs:
        slow = procs.fake_upstream("slow-upstream", tokens=1, delay=3600.0)
        per_stream = {}
        for server, protocol in (
            []
            if not args.rss
            else [
                (procs.passthrough("passthrough", slow), PASSTHROUGH),
                (
                    procs.ours(
                        "ours", slow, auth=args.auth, settings={**ops_settings(args), **PATIENT}
                    ),
                    ours_protocol(args.auth),
                ),
            ]
        ):
            per_stream[server.name] = await idle_memory(
                server, protocol, streams=args.streams, time_limit=args.time_limit
            )
            print(f"  {server.name:<13} {per_stream[server.name]:.1f} KB RSS per open stream")
            server.stop()
        if per_stream:
            ratio = per_stream["ours"] / per_stream["passthrough"]
            print(f"  ours / pass-through: x{ratio:.2f} (issue #33's line: x1.3)")
        if args.trace:
            await traced(args, slow, procs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--streams", type=int, default=1000, help="idle streams (1000)")
    parser.add_argument("--auth", action="store_true", help="ours in AUTH_MODE=jwt")
    parser.add_argument("--ops", action="store_true", help="ours with /metrics and JSON logs")
    parser.add_argument("--trace", action="store_true", help="then tracemalloc's view of ours")
    parser.add_argument(
        "--time-limit", type=float, default=600.0, help="seconds to open them all (600)"
    )
    parser.add_argument("--tracebacks", type=int, default=0, help="and the N biggest stacks")
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--top", type=int, default=25, help="files listed with --trace (25)")
    parser.add_argument("--serve-traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_traced:
        serve_traced()
        return
    run_like_the_server(main_async(args))


if __name__ == "__main__":
    main()
