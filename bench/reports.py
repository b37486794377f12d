"""Cost reports over a big ledger on PostgreSQL: the real report queries, timed.

    .venv/bin/python -m bench.reports     # a throwaway PostgreSQL, 1,000,000 generations
    .venv/bin/python -m bench.reports --rows 100000 --rounds 5
    .venv/bin/python -m bench.reports --url postgresql://postgres@127.0.0.1:5432/postgres

Starts a throwaway PostgreSQL of its own (bench/postgres.py: initdb and pg_ctl, as in
scripts/test: loopback, a free port, no fsync, removed at exit)
unless `--url` names a server, in which case it creates and drops a database `bench_reports_*`
of its own there. The server keeps its defaults (`work_mem` 4 MB among them): a report has to
answer on the database as it is configured, not on one tuned for the benchmark.

The ledger is built with the real migrations: the schema before migration 11 (the generations'
own user id), then `--rows` generations spread evenly over 2026, a conversation per ten of them
(one in twenty deleted since), a budget reservation per reply and per title, written by the
database itself (generate_series). Then the rest of the migrations are applied, timed (migration
11 backfills every row), and the table is compacted and analyzed (`VACUUM FULL`, then `VACUUM
ANALYZE` for the visibility map), as autovacuum would leave a ledger written after it.

Each report is run as the app runs it, through `databases` and asyncpg, every row fetched: as
its JSON answer (`report_with_totals`: rows and totals) and as its CSV (`report`: the rows
through a cursor), best of `--rounds`; and under `EXPLAIN (ANALYZE, BUFFERS)`, for the plan: its
nodes, top down, with how each sort and hash held its rows (memory or disk).

Two variants, measured in turns round after round: `now`, the code and schema as they are, and
`before`, as the reports ran before migration 12: without its statistics (dropped for the
turn), and with the JSON answer's totals read by a second query over the range after the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from databases import Database
from sqlalchemy.dialects import postgresql

from app.billing import reports
from app.billing.reports import ReportRange
from app.storage import migrations
from app.storage.database import open_database
from bench.postgres import fresh_database, throwaway_postgres

USERS = 1000
MODELS = (
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "anthropic/claude-3.5-sonnet",
    "google/gemini-2.0-flash-001",
    "meta-llama/llama-3.1-70b-instruct",
    "deepseek/deepseek-r1",
)
YEAR = (date(2026, 1, 1), date(2026, 12, 31))
CASES = {
    "month, by day and model": ReportRange(date(2026, 3, 1), date(2026, 3, 31), ("day", "model")),
    "year, by day and model": ReportRange(*YEAR, ("day", "model")),
    "year, by user": ReportRange(*YEAR, ("user",)),
    "year, one user's by day": ReportRange(*YEAR, ("day",), "user7"),
}

# One row per generation i: ten per conversation k = i / 10, in order of time. In a
# conversation, position 3 is an error retried by position 4 (attempt 2 of the same message),
# position 9 the title (its own id as its message id, as app/replies/titles.py writes it), the
# rest first attempts of replies. Costs, tokens and models vary by a hash of i.
GENERATIONS = """
WITH g AS (
    SELECT i, i / 10 AS k, i % 10 AS pos, abs(hashtext('h' || i)) AS h,
           timestamptz '2026-01-01 00:00:00+00' + (i * {step}) * interval '1 second' AS at
    FROM generate_series(0, {rows} - 1) AS i
), r AS (
    SELECT g.*,
           CASE WHEN pos = 3 THEN 'error' WHEN i % 50 = 7 THEN 'cancelled' ELSE 'complete' END
               AS status,
           (ARRAY{models})[1 + h % {model_count}] AS requested,
           CASE WHEN pos = 3 THEN 'not_billed' WHEN h % 100 < 94 THEN 'usage'
                WHEN h % 100 < 97 THEN 'generation' WHEN h % 100 < 99 THEN 'none'
                ELSE 'pending' END AS source
    FROM g
)
INSERT INTO generations (id, generation_id, message_id, conversation_id, agent, attempt,
    requested_model, model, status, error_code, prompt_tokens, completion_tokens,
    reasoning_tokens, cached_tokens, cache_write_tokens, cost_picousd, cost_source, started_at,
    first_token_at, ended_at)
SELECT md5('g' || i), 'gen-' || i,
       CASE WHEN pos = 9 THEN md5('g' || i) WHEN pos = 4 THEN md5('m' || (i - 1))
            ELSE md5('m' || i) END,
       md5('c' || k),
       CASE WHEN pos = 9 THEN 'titler' WHEN k % 10 = 0 THEN 'coach' ELSE 'chat' END,
       CASE WHEN pos = 4 THEN 2 ELSE 1 END,
       requested, CASE WHEN pos = 3 THEN NULL ELSE requested END, status,
       CASE WHEN pos = 3 THEN 'upstream_error' END,
       h % 5000, h % 2000, h % 300, h % 1000, h % 500,
       CASE source WHEN 'not_billed' THEN 0 WHEN 'none' THEN NULL WHEN 'pending' THEN NULL
            ELSE h::bigint END,
       CASE WHEN source = 'pending' AND status <> 'complete' THEN 'none'
            ELSE source END,
       at, at + interval '0.5 second', at + interval '3 seconds'
FROM r
"""
CONVERSATIONS = """
INSERT INTO conversations (id, user_id, agent, title, created_at, updated_at)
SELECT md5('c' || k), 'user' || (k % {users}),
       CASE WHEN k % 10 = 0 THEN 'coach' ELSE 'chat' END, 't',
       timestamptz '2026-01-01 00:00:00+00' + (k * 10 * {step}) * interval '1 second',
       timestamptz '2026-01-01 00:00:00+00' + (k * 10 * {step}) * interval '1 second'
FROM generate_series(0, {rows} / 10 - 1) AS k
WHERE k % 20 <> 0  -- one conversation in twenty deleted since: its generations stay
"""
RESERVATIONS = """
INSERT INTO budget_reservations (id, user_id, day, month, reserved_picousd, amount_picousd,
    state, created_at, ended_at, settled_at)
SELECT CASE WHEN i % 10 = 9 THEN md5('g' || i) ELSE md5('m' || i) END,
       'user' || (i / 10 % {users}), to_char(at, 'YYYY-MM-DD'), to_char(at, 'YYYY-MM'),
       10000000000, 1000000, 'settled', at, at, at
FROM (SELECT i, timestamptz '2026-01-01 00:00:00+00' + (i * {step}) * interval '1 second' AS at
      FROM generate_series(0, {rows} - 1) AS i) AS g
WHERE i % 10 <> 4  -- a retry is the same reply: one reservation
"""


async def build(url: str, rows: int) -> dict[str, Any]:
    """The ledger, as described above; what it took and how big it is."""
    users_migration = next(
        m for m in migrations.MIGRATIONS if m.statements is migrations._generation_users
    )
    every = migrations.MIGRATIONS
    before = every[: every.index(users_migration)]
    step = 365 * 86400 / rows  # seconds between two generations: spread over the year
    values = {
        "rows": rows,
        "step": repr(step),
        "users": USERS,
        "models": "[" + ", ".join(f"'{m}'" for m in MODELS) + "]",
        "model_count": len(MODELS),
    }
    database = await open_database(url, max_size=1, command_timeout=3600)
    try:
        migrations.MIGRATIONS = before
        try:
            await migrations.migrate(database, url=url)
        finally:
            migrations.MIGRATIONS = every
        started = time.perf_counter()
        for statement in (CONVERSATIONS, GENERATIONS, RESERVATIONS):
            await database.execute(statement.format(**values))
        filled = time.perf_counter() - started
        await database.execute("VACUUM ANALYZE")  # as autovacuum would before the deploy
        started = time.perf_counter()
        applied = await migrations.migrate(database, url=url)
        migrated = time.perf_counter() - started
        # The backfill left a dead copy of every row: compact, as a ledger written after it is.
        await database.execute("VACUUM FULL generations")
        await database.execute("VACUUM ANALYZE")
        sizes = await database.fetch_one(
            "SELECT (SELECT count(*) FROM generations) AS generations,"
            " (SELECT count(*) FROM generations WHERE user_id IS NULL) AS without_user,"
            " (SELECT relpages FROM pg_class WHERE relname = 'generations') AS table_pages,"
            " (SELECT relpages FROM pg_class WHERE relname = 'ix_generations_started_at')"
            " AS index_pages,"
            " current_setting('work_mem') AS work_mem,"
            " current_setting('max_parallel_workers_per_gather') AS workers"
        )
        assert sizes is not None
        return {
            "fill_s": filled,
            "migrations": applied,
            "migrate_s": migrated,
            **dict(sizes._mapping),
        }
    finally:
        await database.disconnect()


def _node_name(node: dict[str, Any]) -> str:
    kind = node["Node Type"]
    if kind == "Aggregate":
        kind = {
            "Sorted": "GroupAggregate",
            "Hashed": "HashAggregate",
            "Mixed": "MixedAggregate",
        }.get(node.get("Strategy", ""), "Aggregate")
    if node.get("Partial Mode") in ("Partial", "Finalize"):
        kind = f"{node['Partial Mode']} {kind}"
    if node.get("Parallel Aware"):
        kind = f"Parallel {kind}"
    if "Index Name" in node:
        kind += f" using {node['Index Name']}"
    elif "Relation Name" in node:
        kind += f" on {node['Relation Name']}"
    details = []
    if "Workers Launched" in node:
        details.append(f"{node['Workers Launched']} workers")
    if "Sort Method" in node:
        details.append(
            f"{node['Sort Method']}, {node['Sort Space Used']} kB {node['Sort Space Type'].lower()}"
        )
    if node.get("Disk Usage"):
        details.append(f"{node['HashAgg Batches']} batches, {node['Disk Usage']} kB disk")
    elif "Peak Memory Usage" in node:
        details.append(f"{node['Peak Memory Usage']} kB memory")
    if "Heap Fetches" in node:
        details.append(f"heap fetches {node['Heap Fetches']}")
    return kind + (f" ({', '.join(details)})" if details else "")


def plan_nodes(node: dict[str, Any]) -> list[str]:
    """The plan's nodes, top down (a child after its parent)."""
    return [_node_name(node), *(n for child in node.get("Plans", []) for n in plan_nodes(child))]


async def explain(database: Database, range_: ReportRange) -> dict[str, Any]:
    """The report's query under EXPLAIN (ANALYZE, BUFFERS), its values inlined."""
    query = reports.report_query(range_, dialect="postgresql")
    sql = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    found = await database.fetch_val(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
    [plan] = json.loads(found) if isinstance(found, str) else found
    return plan


@dataclass
class Timing:
    json_ms: float
    csv_ms: float
    explain_ms: float
    rows: int
    nodes: list[str]
    buffers: str


VARIANTS = ("before", "now")
STATISTICS = "generations_report_groups"


async def use_variant(database: Database, variant: str) -> None:
    """`before`: without migration 12's statistics; `now`: with them (its very statements)."""
    await database.execute(f"DROP STATISTICS IF EXISTS {STATISTICS}")
    if variant == "now":
        for statement in migrations._report_group_statistics(postgresql.dialect()):
            await database.execute(statement)


async def answer_json(database: Database, range_: ReportRange, variant: str) -> int:
    """The JSON answer's queries: now one (`report_with_totals`); before, the rows through a
    cursor and then a second pass over the range for the totals."""
    if variant == "now":
        rows, _ = await reports.report_with_totals(database, range_)
        return len(rows)
    count = len([row async for row in reports.report(database, range_)])
    whole = ReportRange(range_.start, range_.end, (), range_.user_id)
    await database.fetch_one(reports.report_query(whole, dialect="postgresql"))
    return count


async def measure(
    database: Database, range_: ReportRange, variant: str, plan: dict[str, Any] | None
) -> tuple[float, float, dict[str, Any]]:
    """One round of a report: its JSON answer's time, its CSV's (the rows through a cursor),
    and its plan under EXPLAIN ANALYZE (kept if faster than `plan`)."""
    started = time.perf_counter()
    rows = await answer_json(database, range_, variant)
    json_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    assert rows == len([row async for row in reports.report(database, range_)])
    csv_ms = (time.perf_counter() - started) * 1000
    found = await explain(database, range_)
    found["rows"] = rows
    if plan is not None and plan["Execution Time"] <= found["Execution Time"]:
        found = plan
    return json_ms, csv_ms, found


def timing(json_ms: list[float], csv_ms: list[float], plan: dict[str, Any]) -> Timing:
    top = plan["Plan"]
    shared = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    temp = top.get("Temp Read Blocks", 0) + top.get("Temp Written Blocks", 0)
    return Timing(
        json_ms=min(json_ms),
        csv_ms=min(csv_ms),
        explain_ms=plan["Execution Time"],
        rows=plan["rows"],
        nodes=plan_nodes(top),
        buffers=f"{shared:,} pages, {temp:,} temp",
    )


async def run(args: argparse.Namespace, admin_url: str, version: str) -> dict[str, Any]:
    async with fresh_database(admin_url, prefix="bench_reports", keep=args.keep) as url:
        print(f"{version}; building {args.rows:,} generations ...", flush=True)
        built = await build(url, args.rows)
        print(
            f"built: {built['generations']:,} generations ({built['without_user']:,} without a"
            f" user), {built['table_pages']:,} table pages, {built['index_pages']:,} pages of"
            f" ix_generations_started_at; filled in {built['fill_s']:.1f} s; migrations"
            f" {built['migrations']} in {built['migrate_s']:.1f} s; work_mem"
            f" {built['work_mem']}, {built['workers']} workers per gather",
            flush=True,
        )
        database = await open_database(url, max_size=1, command_timeout=600)
        times: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        plans: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            # The variants in turns, round after round: a load that comes and goes on a
            # shared machine weighs on both alike.
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    await use_variant(database, variant)
                    for name, range_ in CASES.items():
                        key = (name, variant)
                        json_ms, csv_ms, plans[key] = await measure(
                            database, range_, variant, plans.get(key)
                        )
                        times.setdefault(key, ([], []))
                        times[key][0].append(json_ms)
                        times[key][1].append(csv_ms)
            await use_variant(database, "now")
        finally:
            await database.disconnect()
    results: dict[str, Any] = {"built": built}
    for name in CASES:
        print(f"\n{name}:")
        for variant in VARIANTS:
            key = (name, variant)
            found = timing(*times[key], plans[key])
            results[f"{name} ({variant})"] = vars(found)
            print(
                f"  {variant}: {found.rows:,} rows; JSON {found.json_ms:,.0f} ms,"
                f" CSV {found.csv_ms:,.0f} ms (best of {args.rounds});"
                f" EXPLAIN ANALYZE {found.explain_ms:,.0f} ms, {found.buffers}",
                flush=True,
            )
            for depth, node in enumerate(found.nodes):
                print(f"    {'  ' * min(depth, 6)}{node}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="generations (1,000,000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each report; the best")
    parser.add_argument("--url", help="a PostgreSQL server to use instead of a throwaway one")
    parser.add_argument("--json", help="also write the timings to this file")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="with --url: leave the database (bench_reports) there, to look at by hand",
    )
    args = parser.parse_args(argv)
    if args.keep and not args.url:
        parser.error("--keep needs --url (a throwaway server goes at exit)")
    if args.url:
        results = asyncio.run(run(args, args.url, "PostgreSQL at --url"))
    else:
        with throwaway_postgres() as (admin_url, version):
            results = asyncio.run(run(args, admin_url, version))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
