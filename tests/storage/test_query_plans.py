"""The conversation pages cost what they return, not what the database holds: no query behind
`GET /api/conversations` (a search too) or `GET /api/conversations/{id}` may read a whole table.

Checked on the plans the database makes (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on
PostgreSQL), on a database seeded big enough (2,000 conversations, 20,000 messages, 10,000
generations, analyzed) that PostgreSQL's planner prefers an index wherever one serves: on a few
rows it reads whole tables, rightly, and the test could not tell. Plans, not timings: a plan
that reads a whole table is slow at 500k rows whatever machine runs the test. The queries this
replaced (a GROUP BY over all of `generations` and `messages`, joined to the page) fail it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.storage.conversations import Position, conversations_page
from app.storage.database import is_sqlite, open_database
from app.storage.replies import history_query, messages_with_usage
from app.storage.search import (
    FTS_TABLE,
    fts5_query,
    postgres_best_matches,
    sqlite_best_matches,
    sqlite_snippets,
)
from app.storage.tables import metadata
from tests.support import DatabaseHandle, migrated_store, run_async

USERS, CONVERSATIONS, MESSAGES = 20, 2_000, 10  # per conversation: 10 messages, 5 generations
TABLES = set(metadata.tables)


def seed(database: DatabaseHandle) -> None:
    """The rows, written by the database itself (a recursive CTE: one statement a table)."""

    async def migrated() -> None:
        async with migrated_store(database.url):
            pass

    run_async(migrated())
    stamp = (
        "substr(datetime('2026-01-01', '+' || i || ' seconds'), 1, 19) || '.000000'"
        if is_sqlite(database.url)
        else "timestamptz '2026-01-01' + i * interval '1 second'"
    )
    database.execute(
        "INSERT INTO conversations (id, user_id, agent, title, created_at, updated_at) "
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {CONVERSATIONS})"
        f" SELECT 'c' || i, 'user' || (i - (i / {USERS}) * {USERS}),"
        " CASE WHEN i - (i / 5) * 5 = 0 THEN 'coach' ELSE 'chat' END,"
        f" 't', {stamp}, {stamp} FROM n"
    )
    database.execute(
        "INSERT INTO messages (id, conversation_id, seq, role, content, status, agent,"
        " created_at, updated_at, parent_id) "
        f"WITH RECURSIVE s(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM s WHERE j < {MESSAGES})"
        " SELECT c.id || '-' || j, c.id, j,"
        " CASE WHEN j - (j / 2) * 2 = 1 THEN 'user' ELSE 'assistant' END, 'x', 'complete',"
        " 'chat', c.created_at, c.updated_at,"
        " CASE WHEN j > 1 THEN c.id || '-' || (j - 1) END FROM conversations c CROSS JOIN s"
    )
    database.execute(
        "INSERT INTO generations (id, message_id, conversation_id, agent, attempt,"
        " requested_model, status, prompt_tokens, completion_tokens, reasoning_tokens,"
        " cached_tokens, cost_picousd, cost_source, started_at) "
        "SELECT 'g' || id, id, conversation_id, 'chat', 1, 'openai/gpt-4o', 'complete', 1, 2,"
        " 0, 0, 5, 'usage', created_at FROM messages WHERE role = 'assistant'"
    )
    if not is_sqlite(database.url):
        # As autovacuum would have by the time a table is this big; SQLite is left as
        # production leaves it, without statistics.
        database.execute("ANALYZE")


def whole_table_reads(database: DatabaseHandle, query: sa.Select[Any]) -> list[str]:
    """The tables `query`'s plan reads whole: a scan, or an index walked end to end."""
    sqlite_db = is_sqlite(database.url)
    dialect = sqlite.dialect(paramstyle="named") if sqlite_db else postgresql.dialect()
    compiled = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = dict(compiled.params)
    if sqlite_db:
        # As the app's UTCDateTime stores them; the plan does not depend on the value anyway.
        params = {
            key: value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")
            if isinstance(value, datetime)
            else value
            for key, value in params.items()
        }
        rows = database.query(f"EXPLAIN QUERY PLAN {compiled}", **params)
        # "SCAN t" (with or without an index) reads all of t; "SEARCH t" reads a range of it.
        # The full-text table is always "SCAN"ned: through its index when the plan's index
        # string has M (a MATCH) or = (a rowid), else all of it.
        return [
            row["detail"]
            for row in rows
            if (scan := re.match(r"SCAN (\w+)", row["detail"]))
            and (
                scan[1] in TABLES
                or (scan[1] == FTS_TABLE and not re.search(r"INDEX \d+:\S*[M=]", row["detail"]))
            )
        ]
    sql = re.sub(r"%\((\w+)\)s", r":\1", str(compiled))
    [row] = database.query(f"EXPLAIN (FORMAT JSON) {sql}", **params)
    [plan] = json.loads(row["QUERY PLAN"])
    return [
        f"{node['Node Type']} on {node['Relation Name']}"
        for node in _nodes(plan["Plan"])
        if node.get("Relation Name") in TABLES
        and (
            node["Node Type"] == "Seq Scan"
            or (node["Node Type"] in ("Index Scan", "Index Only Scan") and "Index Cond" not in node)
        )
    ]


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]


@pytest.fixture
def seeded(database: DatabaseHandle) -> DatabaseHandle:
    seed(database)
    return database


def test_opening_a_conversation_reads_only_its_own_rows(seeded):
    assert whole_table_reads(seeded, messages_with_usage("c1234", "c1234-10")) == []


def test_the_history_sent_upstream_reads_only_its_branch(seeded):
    assert whole_table_reads(seeded, history_query("c1234-10", 20)) == []


@pytest.mark.parametrize("agent", [None, "coach"])
def test_a_page_of_conversations_reads_only_the_pages_rows(seeded, agent):
    middle = Position(datetime(2026, 1, 1, 0, 16, 40, tzinfo=UTC), "c1000")
    for after in (None, middle):
        page = conversations_page(user_id="user7", limit=51, agent=agent, after=after)
        assert whole_table_reads(seeded, page) == [], after


def test_a_search_reads_the_matches_not_the_messages(seeded):
    # "tide" is in no message: the plan an index gives for a rare word. (A word in most
    # messages rightly reads them all, through the index or not.)
    if is_sqlite(seeded.url):
        queries = [
            sqlite_best_matches(user_id="user7", match=fts5_query("tide"), limit=21),
            sqlite_best_matches(user_id="user7", match=fts5_query("tide"), limit=21, agent="chat"),
            sqlite_snippets(match=fts5_query("tide"), rowids=[1, 2, 3]),
        ]
    else:
        queries = [
            postgres_best_matches(user_id="user7", text="tide", limit=21),
            postgres_best_matches(user_id="user7", text="tide", limit=21, agent="chat"),
        ]
    for query in queries:
        assert whole_table_reads(seeded, query) == []


def test_the_history_walk_stops_at_its_limit_of_messages_with_content(seeded):
    """A turn reads what its history sends, not the whole branch: the walk up from the leaf
    stops at the `limit`-th message with content, skipping the empty ones (docs/benchmarks.md,
    "Growth": walked to the first message, the 200th turn of a conversation waited longer)."""
    seeded.execute("UPDATE messages SET content = id WHERE conversation_id = 'c1234'")
    seeded.execute("UPDATE messages SET content = '' WHERE id IN ('c1234-9', 'c1234-7')")
    query = history_query("c1234-10", 3)
    [path] = query.get_final_froms()

    async def read() -> tuple[list[str], int]:
        database = await open_database(seeded.url, max_size=1)
        try:
            rows = await database.fetch_all(query)
            walked = await database.fetch_val(sa.select(sa.func.count()).select_from(path))
            return [row[1] for row in rows], walked
        finally:
            await database.disconnect()

    contents, walked = run_async(read())
    assert contents == ["c1234-10", "c1234-8", "c1234-6"]
    assert walked == 5  # 10 down to 6, of the branch's 10
