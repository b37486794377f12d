"""The garbage collector under load: our server as it runs (start-up frozen) and without the freeze.

    .venv/bin/python -m bench.collector                   # 200 streams, 2 rounds of 8 s
    .venv/bin/python -m bench.collector --streams 50 --variants python,frozen,frozen+10000

Servers of ours in front of one fake upstream, measured in turns, each a variant: `frozen` is
the server as it runs (`app/ops/gc_freeze.py`), `python` the same with `gc.freeze` made a no-op,
and `frozen+N` also sets the young generation's threshold to N (Python's is 700). Each runs
under a probe, `python -m bench.collector serve`: the server with a `gc.callbacks` hook that
times every collection and writes its totals to a file on SIGUSR1. For each variant: CPU per
reply, the collector's part of it, collections per generation, the longest pause, peak RSS.
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

from bench.client import add_load_options
from bench.run import OURS, Processes, Result, Server, measure, pooled, processes

PROBE_FILE = "GC_PROBE_FILE"
VARIANT = "GC_PROBE_VARIANT"
GENERATIONS = ("young", "middle", "full")


def serve() -> int:
    """Run `python -m app serve`, timing each collection (totals since start-up, and the
    longest since the last report)."""
    from app.commands.cli import main

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

    variant = os.environ[VARIANT]
    if variant == "python":
        gc.freeze = gc.unfreeze = lambda: None
    elif "+" in variant:
        gc.set_threshold(int(variant.split("+")[1]), *gc.get_threshold()[1:])
    gc.callbacks.append(on_collection)
    signal.signal(signal.SIGUSR1, report)
    return main(["serve"])


def probe(server: Server, path: Path) -> dict[str, list[float]]:
    """The probed server's totals; called between measurements, when nothing else runs here."""
    path.unlink(missing_ok=True)
    server.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 60  # a bound on waiting (a loaded machine), not a speed
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not report its collections")
        time.sleep(0.01)
    return json.loads(path.read_text())


@dataclass
class Probed:
    """One variant's server, and what its probe saw over all its rounds."""

    server: Server
    report: Path  # where the probe writes its totals
    results: list[Result] = field(default_factory=list)
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    gc_seconds: float = 0.0
    longest: float = 0.0

    async def measure(self, args: argparse.Namespace, time_limit: float) -> Result:
        before = probe(self.server, self.report)
        result = await measure(
            self.server, OURS, level=args.streams, duration=args.duration, time_limit=time_limit
        )
        after = probe(self.server, self.report)
        self.results.append(result)
        for generation in range(3):
            self.collections[generation] += (
                after["counts"][generation] - before["counts"][generation]
            )
        self.gc_seconds += sum(after["seconds"]) - sum(before["seconds"])
        self.longest = max(self.longest, *after["longest"])
        return result

    def row(self, name: str) -> str:
        total = pooled(self.results)
        replies = total.streams - total.errors
        per_reply = 1000 / max(1, replies)
        share = 100 * self.gc_seconds / total.cpu if total.cpu else float("nan")  # 0 ticks
        return (
            f"{name:<16}{replies:>8}{total.cpu_ms_per_reply:>14.2f}"
            f"{self.gc_seconds * per_reply:>13.3f}{share:>9.1f}%"
            f"{'/'.join(map(str, self.collections)):>20}{1000 * self.longest:>18.1f}"
            f"{total.peak_rss_kb / 1024:>9.1f}"
        )


async def main_async(args: argparse.Namespace) -> None:
    with processes() as procs:
        upstream = procs.fake_upstream("upstream", tokens=args.tokens, delay=args.delay)
        probed = {variant: start_probed(procs, variant, upstream) for variant in args.variants}
        time_limit = 60.0 + args.tokens * args.delay
        for round_ in range(args.rounds):
            # Alternate the order, so no variant always runs on a warmer machine.
            for variant, server in list(probed.items())[:: -1 if round_ % 2 else 1]:
                result = await server.measure(args, time_limit)
                if result.errors:
                    print(f"{variant}: {result.errors} streams failed", file=sys.stderr)
    print(
        f"ours at {args.streams} streams, {args.tokens} tokens {args.delay * 1000:g} ms apart, "
        f"{args.rounds} x {args.duration:g} s per variant"
    )
    print(
        f"{'variant':<16}{'replies':>8}{'cpu ms/reply':>14}{'gc ms/reply':>13}{'gc share':>10}"
        f"{'/'.join(GENERATIONS):>20}{'longest pause ms':>18}{'peak MB':>9}"
    )
    for variant, server in probed.items():
        print(server.row(variant))


def start_probed(procs: Processes, variant: str, upstream: Server) -> Probed:
    name = f"gc-{variant}"
    report = procs.workdir / f"{name}.gc.json"
    server = procs.ours(
        name,
        upstream,
        auth=False,  # what the collector costs, without token checks in the way
        settings={VARIANT: variant, PROBE_FILE: str(report)},
        serve=("-m", "bench.collector", "serve"),
    )
    return Probed(server, report)


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
    parser.add_argument(
        "--variants",
        type=lambda text: text.split(","),
        default=["python", "frozen"],
        help="python, frozen (the server as it runs), frozen+N (young threshold N)",
    )
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
