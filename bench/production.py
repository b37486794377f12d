"""`python -m bench --profile production`: the server as production runs it, against the raw
pass-through in the same run.

    .venv/bin/python -m bench --profile production --rounds 3
    .venv/bin/python -m bench --profile production --processes 2 --redis --rounds 3
    .venv/bin/python -m bench --profile production --stages --levels 1,50   # where time goes
    .venv/bin/python -m bench --profile production --postgres-url postgresql://u@host/postgres

Production shape: APP_ENV=production with AUTH_MODE=jwt (every request carries a token the
driver signs), every spend limit and the per-user rate window on (`SPEND_LIMITS`: every check
made, none ever reached), /metrics and JSON logs on, as `ours` on SQLite (`prod-sqlite`) and
on PostgreSQL (`prod-pg`: a throwaway server started as scripts/test starts one, on loopback,
without fsync; or a database of its own, dropped at exit, on `--postgres-url`'s server). With
`--processes 2 --redis`, also two processes on one PostgreSQL database and one Redis
(`prod-pg-x2`: REDIS_URL carries the live replies and the rate windows), the streams dealt to
each in turn, against two pass-through processes dealt the same way (`passthrough-x2`).

Each figure is set against the pass-through with as many processes, measured in the same
rounds; the lines are issue #23's: at 50 streams, the time to first delta added over the
upstream and the CPU per reply at most 1.5 times the pass-through's; at 200 streams, at least
0.75 times its replies per second, and no errors; and per idle stream (its upstream silent
after its first chunk) at most 1.3 times its memory.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator

from bench.postgres import fresh_database, throwaway_postgres
from bench.run import (
    MIN_ADDED_MS,
    OPENROUTER,
    PASSTHROUGH,
    SPEND_LIMITS,
    Group,
    Processes,
    Result,
    Target,
    _verdict,
    added_ttft_ms,
    idle_memory,
    measure_rounds,
    ops_settings,
    ours_protocol,
    processes,
    stage_table,
    table,
)
from bench.scale_out import STREAM_TOKEN_SECRET, throwaway_redis

# Each production target and the pass-through it is held against (as many processes).
FLOORS = {
    "prod-sqlite": "passthrough",
    "prod-pg": "passthrough",
    "prod-pg-x2": "passthrough-x2",
}
TTFT_RATIO, CPU_RATIO, RATE_RATIO, IDLE_RATIO = 1.5, 1.5, 0.75, 1.3


def production_settings() -> dict[str, str]:
    return {
        **SPEND_LIMITS,
        **ops_settings(argparse.Namespace(ops=True)),
        # A stream token is checked by whichever process its stream reaches: one key for all.
        "STREAM_TOKEN_SECRET": STREAM_TOKEN_SECRET,
    }


Databases = Callable[[str], Awaitable[str]]  # a new database's URL for a target's name


@contextlib.contextmanager
def postgres_server(url: str | None) -> Iterator[tuple[str, str]]:
    """`--postgres-url`'s server, or a throwaway one: (admin URL, what it is)."""
    if url:
        yield url, "the server at --postgres-url"
        return
    with throwaway_postgres() as (admin_url, version):
        yield admin_url, f"a throwaway {version}"


async def start_targets(
    procs: Processes,
    args: argparse.Namespace,
    *,
    databases: Databases,
    redis_url: str | None,
) -> list[Target]:
    upstream = procs.fake_upstream("upstream", tokens=args.tokens, delay=args.delay)
    protocol = ours_protocol(True)
    settings = production_settings()
    targets: list[Target] = [
        (upstream, OPENROUTER),
        (procs.passthrough("passthrough", upstream, clients=args.clients), PASSTHROUGH),
        (
            procs.ours("prod-sqlite", upstream, auth=True, settings=settings, stages=args.stages),
            protocol,
        ),
        (
            procs.ours(
                "prod-pg",
                upstream,
                auth=True,
                settings={**settings, "DATABASE_URL": await databases("prod_pg")},
                stages=args.stages,
            ),
            protocol,
        ),
    ]
    if redis_url is not None:
        floors = [
            procs.passthrough(f"passthrough-{n}", upstream, clients=args.clients) for n in "ab"
        ]
        shared = {
            **settings,
            "DATABASE_URL": await databases("prod_pg_x2"),
            "REDIS_URL": redis_url,
        }
        pair = [procs.ours(f"prod-pg-{n}", upstream, auth=True, settings=shared) for n in "ab"]
        targets += [
            (Group("passthrough-x2", floors), PASSTHROUGH),
            (Group("prod-pg-x2", pair), protocol),
        ]
    return targets


def production_lines(
    by: dict[tuple[str, int], Result], levels: list[int]
) -> tuple[list[str], list[str]]:
    """Each production target against its pass-through, per level; the lines at 50 and 200."""
    lines, verdicts = [], []
    for level in levels:
        up = by[("upstream", level)]
        for name, floor_name in FLOORS.items():
            if (name, level) not in by:
                continue
            ours, floor = by[(name, level)], by[(floor_name, level)]
            ours_added = added_ttft_ms(ours, up)
            floor_added = max(MIN_ADDED_MS, added_ttft_ms(floor, up))
            cpu = ours.cpu_ms_per_reply / floor.cpu_ms_per_reply
            rate = ours.replies_per_s / floor.replies_per_s
            lines.append(
                f"level {level:>4}: {name:<11} ttft added {ours_added:.1f} ms vs {floor_name} "
                f"{floor_added:.1f} ms (x{ours_added / floor_added:.2f}); cpu/reply "
                f"{ours.cpu_ms_per_reply:.2f} vs {floor.cpu_ms_per_reply:.2f} ms (x{cpu:.2f}); "
                f"replies/s x{rate:.2f}; errors {ours.errors}"
            )
            if level == 50:
                verdicts += [
                    _verdict(
                        ours_added <= TTFT_RATIO * floor_added,
                        f"{name}, 50 streams: ttft added x{ours_added / floor_added:.2f} "
                        f"<= x{TTFT_RATIO} {floor_name}'s",
                    ),
                    _verdict(
                        cpu <= CPU_RATIO,
                        f"{name}, 50 streams: cpu/reply x{cpu:.2f} <= x{CPU_RATIO} {floor_name}'s",
                    ),
                ]
            if level == 200:
                verdicts += [
                    _verdict(
                        rate >= RATE_RATIO,
                        f"{name}, 200 streams: replies/s x{rate:.2f} >= x{RATE_RATIO} "
                        f"{floor_name}'s",
                    ),
                    _verdict(ours.errors == 0, f"{name}, 200 streams: {ours.errors} errors == 0"),
                ]
    return lines, verdicts


async def idle_lines(
    args: argparse.Namespace, *, databases: Databases
) -> tuple[list[str], list[str]]:
    """Memory per idle stream: the pass-through, production ours on SQLite and PostgreSQL."""
    lines = [f"idle streams ({args.idle}, upstream silent after its first chunk):"]
    per_stream: dict[str, float] = {}
    with processes() as procs:
        slow = procs.fake_upstream("slow-upstream", tokens=1, delay=3600.0)
        settings = production_settings()
        idle_pg = await databases("prod_pg_idle")
        for server, protocol in [
            (procs.passthrough("passthrough", slow, clients=args.clients), PASSTHROUGH),
            (procs.ours("prod-sqlite", slow, auth=True, settings=settings), ours_protocol(True)),
            (
                procs.ours(
                    "prod-pg", slow, auth=True, settings={**settings, "DATABASE_URL": idle_pg}
                ),
                ours_protocol(True),
            ),
        ]:
            per_stream[server.name] = await idle_memory(
                server, protocol, streams=args.idle, time_limit=120.0
            )
            lines.append(
                f"  {server.name:<13} {per_stream[server.name]:.1f} KB RSS per open stream"
            )
    floor = per_stream["passthrough"]
    verdicts = [
        _verdict(
            per_stream[name] <= IDLE_RATIO * floor,
            f"{name}, {args.idle} idle streams: x{per_stream[name] / floor:.2f} <= x{IDLE_RATIO} "
            "the pass-through's memory each",
        )
        for name in ("prod-sqlite", "prod-pg")
    ]
    return lines, verdicts


async def main_async(args: argparse.Namespace) -> list[str]:
    time_limit = 60.0 + args.tokens * args.delay
    with postgres_server(args.postgres_url) as (admin_url, which):
        print(f"bench: production profile; PostgreSQL: {which}", flush=True)
        async with contextlib.AsyncExitStack() as created:  # each dropped at exit

            async def new_database(name: str) -> str:
                database = fresh_database(admin_url, prefix=f"bench_{name}")
                return await created.enter_async_context(database)

            verdicts = await _run(args, new_database, time_limit=time_limit)
    sys.stdout.flush()
    return verdicts


async def _run(args: argparse.Namespace, databases: Databases, *, time_limit: float) -> list[str]:
    # Redis goes after the servers that use it (exit order is the reverse).
    with contextlib.ExitStack() as stack, processes() as procs:
        redis_url = stack.enter_context(throwaway_redis(procs.workdir)) if args.redis else None
        targets = await start_targets(procs, args, databases=databases, redis_url=redis_url)
        results = await measure_rounds(targets, args, time_limit=time_limit)
    print(table(results))
    lines, verdicts = production_lines({(r.target, r.level): r for r in results}, args.levels)
    print("\nproduction shape against the pass-through (as many processes), ttft at p50:")
    print("\n".join(lines))
    if args.stages:
        print("\n" + stage_table(results, args.levels))
    if args.idle:
        idle, more = await idle_lines(args, databases=databases)
        print("\n" + "\n".join(idle))
        verdicts += more
    return verdicts
