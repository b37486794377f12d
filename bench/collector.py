"""The garbage collector under load: our server with Python's collector, and with GC_THRESHOLD's.

    .venv/bin/python -m bench.collector                   # 200 streams, 2 rounds of 8 s
    .venv/bin/python -m bench.collector --streams 50 --rounds 3

Two servers of ours in front of one fake upstream, measured in turns: `GC_THRESHOLD=0` (the
collector as Python sets it) and the default (start-up's objects frozen, young collections
every 10,000 allocations; `app/gc_tuning.py`). Each runs under a probe, `python -m
bench.collector serve`: the server with a `gc.callbacks` hook that times every collection and
writes its totals to a file on SIGUSR1. For each setting: CPU per reply, the collector's part
of it, collections per generation, the longest pause, and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.settings import Settings
from bench.client import add_load_options
from bench.run import OURS, Processes, Server, measure, processes

PROBE_FILE = "GC_PROBE_FILE"
GENERATIONS = ("young", "middle", "full")


def serve() -> int:
    """Run `python -m app serve`, timing each collection (totals since start-up, and the
    longest since the last report)."""
    from app.cli import main

    counts, seconds, longest = [0, 0, 0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    started = 0.0

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
            return
        took, generation = time.perf_counter() - started, info["generation"]
        counts[generation] += 1
        seconds[generation] += took
        longest[generation] = max(longest[generation], took)

    def report(signum: int, frame: object) -> None:
        path = Path(os.environ[PROBE_FILE])
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps({"counts": counts, "seconds": seconds, "longest": longest}))
        scratch.replace(path)  # the driver never reads half a file
        longest[:] = [0.0, 0.0, 0.0]

    gc.callbacks.append(on_collection)
    signal.signal(signal.SIGUSR1, report)
    return main(["serve"])


def probe(server: Server, path: Path) -> dict[str, list[float]]:
    """The probed server's totals; called between measurements, when nothing else runs here."""
    path.unlink(missing_ok=True)
    server.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not report its collections")
        time.sleep(0.01)
    return json.loads(path.read_text())


@dataclass
class Totals:
    replies: int = 0
    cpu: float = 0.0
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    gc_seconds: float = 0.0
    longest: float = 0.0
    peak_rss_kb: int = 0

    def row(self, name: str) -> str:
        per_reply = 1000 / max(1, self.replies)
        return (
            f"{name:<16}{self.replies:>8}{self.cpu * per_reply:>14.2f}"
            f"{self.gc_seconds * per_reply:>13.3f}{100 * self.gc_seconds / self.cpu:>9.1f}%"
            f"{'/'.join(map(str, self.collections)):>20}{1000 * self.longest:>18.1f}"
            f"{self.peak_rss_kb / 1024:>9.1f}"
        )


async def main_async(args: argparse.Namespace) -> None:
    default = Settings.model_fields["gc_threshold"].default
    settings = {"0 (Python's)": "0", f"{default} (default)": str(default)}
    with processes() as procs:
        upstream = procs.fake_upstream("upstream", tokens=args.tokens, delay=args.delay)
        servers = {
            name: (start_probed(procs, f"gc-{value}", upstream, value), Totals())
            for name, value in settings.items()
        }
        time_limit = 60.0 + args.tokens * args.delay
        for round_ in range(args.rounds):
            # Alternate the order, so neither setting always runs on a warmer machine.
            order = list(servers.items())[:: -1 if round_ % 2 else 1]
            for name, (server, totals) in order:
                path = procs.workdir / f"{server.name}.gc.json"
                before = probe(server, path)
                result = await measure(
                    server, OURS, level=args.streams, duration=args.duration, time_limit=time_limit
                )
                after = probe(server, path)
                totals.replies += result.streams - result.errors
                totals.cpu += result.cpu
                for generation in range(3):
                    totals.collections[generation] += (
                        after["counts"][generation] - before["counts"][generation]
                    )
                totals.gc_seconds += sum(after["seconds"]) - sum(before["seconds"])
                totals.longest = max(totals.longest, *after["longest"])
                totals.peak_rss_kb = result.peak_rss_kb
                if result.errors:
                    print(f"{name}: {result.errors} streams failed", file=sys.stderr)
    print(
        f"ours at {args.streams} streams, {args.tokens} tokens {args.delay * 1000:g} ms apart, "
        f"{args.rounds} x {args.duration:g} s per setting"
    )
    print(
        f"{'GC_THRESHOLD':<16}{'replies':>8}{'cpu ms/reply':>14}{'gc ms/reply':>13}{'gc share':>10}"
        f"{'/'.join(GENERATIONS):>20}{'longest pause ms':>18}{'peak MB':>9}"
    )
    for name, (_, totals) in servers.items():
        print(totals.row(name))


def start_probed(procs: Processes, name: str, upstream: Server, threshold: str) -> Server:
    path = procs.workdir / f"{name}.gc.json"
    return procs.ours(
        name,
        upstream,
        settings={"GC_THRESHOLD": threshold, PROBE_FILE: str(path)},
        serve=("-m", "bench.collector", "serve"),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve()
    parser = argparse.ArgumentParser(
        prog="python -m bench.collector", description=__doc__.split("\n")[0]
    )
    add_load_options(parser)
    parser.set_defaults(streams=200)
    parser.add_argument("--rounds", type=int, default=2, help="turns per setting (2)")
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
