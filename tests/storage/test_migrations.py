"""Schema migrations on whichever database the suite runs on: order, idempotence, two processes
racing for the lock, and the migrated schema matching the tables `app/storage/tables.py` defines."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from databases import Database
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from app.billing.reports import ReportRange, report, report_query
from app.storage import migrations
from app.storage.database import is_sqlite, open_database
from app.storage.migrations import (
    ADVISORY_LOCK_KEY,
    MIGRATIONS,
    Migration,
    MigrationsPending,
    migrate,
    pending_migrations,
    require_migrated,
)
from app.storage.search import FTS_TABLE
from app.storage.tables import metadata
from tests.support import DatabaseHandle, make_database, migrated_store, run_async


@pytest.fixture
def database(empty_database) -> DatabaseHandle:
    """Every test here migrates for itself, from nothing."""
    return empty_database


async def _opened(url: str) -> Database:
    return await open_database(url, max_size=2)


async def _migrate_over_rows(
    db: Database,
    *,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    migration: Migration,
    rows: list[str],
) -> None:
    """The schema as it was before `migration`, `rows` written into it (its statements), then
    every migration from `migration` on: what a database written by the old code goes through."""
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[: MIGRATIONS.index(migration)])
    await migrate(db, url=url)
    for statement in rows:
        await db.execute(statement)
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    assert migration.version in await migrate(db, url=url)


def _migrate_database_over_rows(url: str, **over: Any) -> None:
    """`_migrate_over_rows` on a connection of its own to the test's database."""

    async def run() -> None:
        db = await _opened(url)
        try:
            await _migrate_over_rows(db, url=url, **over)
        finally:
            await db.disconnect()

    asyncio.run(run())


def test_migrations_apply_in_order_are_recorded_and_apply_once(database):
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions)), "versions must be unique and in order"

    async def run() -> tuple[list[int], list[int]]:
        db = await _opened(database.url)
        try:
            return await migrate(db, url=database.url), await migrate(db, url=database.url)
        finally:
            await db.disconnect()

    first, second = asyncio.run(run())
    rows = database.query("SELECT version, name FROM schema_migrations ORDER BY version")

    assert first == versions
    assert second == []
    assert rows == [{"version": m.version, "name": m.name} for m in MIGRATIONS]


def test_a_new_migration_applies_alone_on_a_migrated_database(database, monkeypatch):
    added = Migration(
        MIGRATIONS[-1].version + 1,
        "conversations.pinned",
        lambda dialect: ["ALTER TABLE conversations ADD COLUMN pinned BOOLEAN"],
    )

    async def run() -> None:
        db = await _opened(database.url)
        try:
            await migrate(db, url=database.url)
            monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, added])
            assert await pending_migrations(db, url=database.url) == [added]
            with pytest.raises(MigrationsPending, match="python -m app migrate"):
                await require_migrated(db, url=database.url)
            assert await migrate(db, url=database.url) == [added.version]
            await require_migrated(db, url=database.url)
            assert await migrate(db, url=database.url) == []
        finally:
            await db.disconnect()

    asyncio.run(run())

    assert database.query("SELECT COUNT(pinned) AS n FROM conversations") == [{"n": 0}]
    assert [r["version"] for r in database.query("SELECT version FROM schema_migrations")] == [
        *[m.version for m in MIGRATIONS],
        added.version,
    ]


def test_a_migration_numbered_below_one_applied_already_is_applied_when_it_lands(
    database, monkeypatch
):
    """Two branches take the next numbers (19, 20); if 20 is deployed first, 19 comes later, to
    a database that has 20: the runner applies what a database lacks, whatever is above it."""
    below = Migration(
        MIGRATIONS[-1].version + 1,
        "conversations.pinned",
        lambda dialect: ["ALTER TABLE conversations ADD COLUMN pinned BOOLEAN"],
    )
    above = Migration(
        below.version + 1,
        "conversations.archived",
        lambda dialect: ["ALTER TABLE conversations ADD COLUMN archived BOOLEAN"],
    )

    async def run() -> None:
        db = await _opened(database.url)
        try:
            monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, above])
            assert above.version in await migrate(db, url=database.url)
            monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, below, above])
            assert await pending_migrations(db, url=database.url) == [below]
            assert await migrate(db, url=database.url) == [below.version]
            await require_migrated(db, url=database.url)
        finally:
            await db.disconnect()

    asyncio.run(run())

    assert database.query("SELECT COUNT(pinned) AS n FROM conversations") == [{"n": 0}]


def test_an_empty_database_lacks_every_migration(database):
    async def run() -> list[Migration]:
        db = await _opened(database.url)
        try:
            return await pending_migrations(db, url=database.url)
        finally:
            await db.disconnect()

    assert asyncio.run(run()) == MIGRATIONS


async def _columns(url: str) -> dict[str, dict[str, tuple[str, bool]]]:
    """{table: {column: (type, nullable)}} as the database itself describes them."""
    db = await _opened(url)
    try:
        if is_sqlite(url):
            tables = [
                row[0]
                for row in await db.fetch_all(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT GLOB 'sqlite_*'"
                    # The full-text index and its shadow tables: an index, queried by MATCH.
                    f" AND name NOT GLOB '{FTS_TABLE}*'"
                )
            ]
            return {
                table: {
                    row[1]: (row[2].upper(), not row[3])
                    for row in await db.fetch_all(f'PRAGMA table_info("{table}")')
                }
                for table in tables
            }
        result: dict[str, dict[str, tuple[str, bool]]] = {}
        for row in await db.fetch_all(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            " AND a.attnum > 0 AND NOT a.attisdropped"
        ):
            result.setdefault(row[0], {})[row[1]] = (row[2], not row[3])
        return result
    finally:
        await db.disconnect()


def test_migrated_schema_matches_the_tables_the_store_queries(database, tmp_path):
    """A column added to `app/storage/tables.py` without a migration (or the reverse) fails here."""
    dialect = sqlite.dialect() if is_sqlite(database.url) else postgresql.dialect()
    expected_dir = tmp_path / "expected"
    expected_dir.mkdir()
    with make_database(expected_dir) as expected:

        async def run() -> tuple[dict, dict]:
            db = await _opened(database.url)
            try:
                await migrate(db, url=database.url)
            finally:
                await db.disconnect()
            reference = await _opened(expected.url)
            try:
                for table in metadata.sorted_tables:
                    await reference.execute(str(CreateTable(table).compile(dialect=dialect)))
            finally:
                await reference.disconnect()
            return await _columns(database.url), await _columns(expected.url)

        migrated, wanted = asyncio.run(run())

    assert set(migrated) == set(wanted) | {"schema_migrations"}
    for table in wanted:
        assert migrated[table] == wanted[table], table


def test_processes_migrating_at_once_apply_the_schema_once(database, tmp_path):
    """Real `python -m app migrate` processes, released together from behind the lock."""
    processes = 2
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": database.url, "APP_ENV": "development"}

    async def waiting_for_lock(proc: asyncio.subprocess.Process) -> bytes:
        seen = b""
        while b"taking the migration lock" not in seen:
            line = await proc.stderr.readline()
            assert line, f"migrate ended before taking the lock: {seen.decode()}"
            seen += line
        return seen

    async def waiters_on_advisory_lock(db: Database) -> int:
        return await db.fetch_val(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )

    async def run() -> list[tuple[int, str, str]]:
        holder = await _opened(database.url)
        try:
            async with holder.connection() as connection:
                # Hold the very lock `migrate` takes, so every process queues behind it.
                if is_sqlite(database.url):
                    await connection.execute("BEGIN IMMEDIATE")
                else:
                    await connection.execute("BEGIN")
                    await connection.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
                procs = [
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "app",
                        "migrate",
                        cwd=tmp_path,  # away from a developer's .env
                        env=env,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                    )
                    for _ in range(processes)
                ]
                early = await asyncio.wait_for(
                    asyncio.gather(*(waiting_for_lock(p) for p in procs)), timeout=30
                )
                if not is_sqlite(database.url):
                    deadline = asyncio.get_running_loop().time() + 10
                    async with holder.connection() as probe:
                        while await waiters_on_advisory_lock(probe) < processes:
                            assert asyncio.get_running_loop().time() < deadline
                            await asyncio.sleep(0.02)
                await connection.execute("COMMIT")
            results = []
            for proc, before in zip(procs, early, strict=True):
                out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
                results.append((proc.returncode, out.decode(), (before + err).decode()))
            return results
        finally:
            await holder.disconnect()

    results = asyncio.run(run())

    for returncode, _, err in results:
        assert returncode == 0, err
    outputs = sorted(out.strip() for _, out, _ in results)
    applied = [m.version for m in MIGRATIONS]
    assert outputs == [
        f"migrations applied: {applied}",
        "migrations applied: none, the schema is up to date",
    ]
    rows = database.query("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == applied


def test_the_message_tree_keeps_what_conversations_written_before_it_show(database, monkeypatch):
    """Rows the old schema wrote (messages in `seq` order only) become one branch each: every
    message's parent is the one before it, the branch shown ends at the last."""
    tree = next(m for m in MIGRATIONS if m.statements is migrations._message_tree)
    stamp = "'2026-01-01 00:00:00'"
    # Ids against `seq` order, so a parent found by id order would be wrong.
    written = {"c1": ["m9", "m3", "m7", "m1"], "c2": ["m5", "m4"]}
    rows = []
    for conversation_id, ids in written.items():
        rows.append(
            "INSERT INTO conversations (id, user_id, agent, title, created_at, updated_at)"
            f" VALUES ('{conversation_id}', 'dev', 'chat', 't', {stamp}, {stamp})"
        )
        rows.extend(
            "INSERT INTO messages (id, conversation_id, seq, role, content, status, agent,"
            f" created_at, updated_at) VALUES ('{message_id}', '{conversation_id}', {seq},"
            f" '{'user' if seq % 2 else 'assistant'}', '{message_id} said', 'complete', 'chat',"
            f" {stamp}, {stamp})"
            for seq, message_id in enumerate(ids, 1)
        )

    _migrate_database_over_rows(database.url, monkeypatch=monkeypatch, migration=tree, rows=rows)

    parents = {
        row["id"]: row["parent_id"] for row in database.query("SELECT id, parent_id FROM messages")
    }
    assert parents == {"m9": None, "m3": "m9", "m7": "m3", "m1": "m7", "m5": None, "m4": "m5"}
    leaves = database.query("SELECT id, active_leaf_id FROM conversations ORDER BY id")
    assert leaves == [{"id": "c1", "active_leaf_id": "m1"}, {"id": "c2", "active_leaf_id": "m4"}]

    async def read() -> tuple[list[dict], list[dict], list[dict]]:
        async with migrated_store(database.url) as store:
            shown = await store.replies.in_conversation(conversation_id="c1", leaf_id="m1")
            history = await store.replies.history(leaf_id="m1", limit=3)
            # The full-text index (migration 6) still finds the rows the tree's update rewrote.
            found = await store.search.find(user_id="dev", text="m7", limit=5)
            return shown, history, found

    shown, history, found = run_async(read())
    assert [(f["conversation_id"], f["message_id"]) for f in found] == [("c1", "m7")]
    assert [(m["id"], m["sibling_ids"]) for m in shown] == [
        ("m9", ["m9"]),
        ("m3", ["m3"]),
        ("m7", ["m7"]),
        ("m1", ["m1"]),
    ]
    assert history == [
        {"role": "assistant", "content": "m3 said"},
        {"role": "user", "content": "m7 said"},
        {"role": "assistant", "content": "m1 said"},
    ]


def test_generations_take_their_user_from_the_conversation_or_the_reservation(
    database, monkeypatch
):
    """Migration 11 on rows the old schema wrote: a generation's user is its conversation's;
    when the conversation was deleted, its budget reservation's (id: the generation's message
    id, a reply's or a title's own); with neither (a `check` ping), none."""
    users = next(m for m in MIGRATIONS if m.statements is migrations._generation_users)
    stamp = "'2026-03-02 10:00:00'"
    ledger = {  # generation id: (message id, conversation id)
        "g-reply": ("m-reply", "c-alice"),  # conversation present
        "g-title": ("g-title", "c-alice"),  # a title's row: its own id as its message id
        "g-gone": ("m-gone", "c-deleted"),  # conversation deleted, its reservation kept
        "g-gone-retry": ("m-gone", "c-deleted"),  # a second attempt of the same reply
        "g-gone-title": ("g-gone-title", "c-deleted"),
        "g-ping": ("m-ping", "c-ping"),  # `python -m app check`: neither
    }
    reservations = {"m-reply": "alice", "m-gone": "bob", "g-gone-title": "bob"}

    rows = [
        "INSERT INTO conversations (id, user_id, agent, title, created_at, updated_at)"
        f" VALUES ('c-alice', 'alice', 'chat', 't', {stamp}, {stamp})",
        *(
            "INSERT INTO generations (id, message_id, conversation_id, agent, attempt,"
            " requested_model, status, prompt_tokens, completion_tokens, reasoning_tokens,"
            " cached_tokens, cost_picousd, cost_source, started_at)"
            f" VALUES ('{generation_id}', '{message_id}', '{conversation_id}', 'chat', 1,"
            f" 'openai/gpt-4o', 'complete', 10, 5, 0, 0, 1000, 'usage', {stamp})"
            for generation_id, (message_id, conversation_id) in ledger.items()
        ),
        *(
            "INSERT INTO budget_reservations (id, user_id, day, month, reserved_picousd,"
            f" amount_picousd, state, created_at) VALUES ('{reservation_id}', '{user_id}',"
            f" '2026-03-02', '2026-03', 5000, 1000, 'settled', {stamp})"
            for reservation_id, user_id in reservations.items()
        ),
    ]

    _migrate_database_over_rows(database.url, monkeypatch=monkeypatch, migration=users, rows=rows)

    found = {
        row["id"]: row["user_id"] for row in database.query("SELECT id, user_id FROM generations")
    }
    assert found == {
        "g-reply": "alice",
        "g-title": "alice",
        "g-gone": "bob",
        "g-gone-retry": "bob",
        "g-gone-title": "bob",
        "g-ping": None,
    }

    async def by_user() -> list[dict]:
        db = await _opened(database.url)
        try:
            day = date(2026, 3, 2)
            return [row async for row in report(db, ReportRange(day, day, ("user",)))]
        finally:
            await db.disconnect()

    rows = {row["user"]: row["generations"] for row in asyncio.run(by_user())}
    assert rows == {"alice": 2, "bob": 3, None: 1}
    if not is_sqlite(database.url):
        # The report's covering index was built again with the user in it.
        [index] = database.query(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_generations_started_at'"
        )
        assert "user_id" in index["indexdef"] and "conversation_id" not in index["indexdef"]


def test_budget_totals_are_backfilled_then_kept_by_every_write_of_a_reservation(
    database, monkeypatch
):
    """Migration 13's running totals: the sums of the reservations already there, then kept
    equal to them through inserts, settlements (a change of amount), other updates and deletes,
    on both databases (SQLite triggers, PostgreSQL's trigger function)."""
    totals = next(m for m in MIGRATIONS if m.statements is migrations._budget_totals)
    stamp = "'2026-01-01 00:00:00'"

    def reservation(id_: str, user: str, day: str, amount: int) -> str:
        return (
            "INSERT INTO budget_reservations (id, user_id, day, month, reserved_picousd,"
            f" amount_picousd, state, created_at) VALUES ('{id_}', '{user}', '{day}',"
            f" '{day[:7]}', {amount}, {amount}, 'held', {stamp})"
        )

    async def run() -> None:
        db = await _opened(database.url)
        try:
            await _migrate_over_rows(
                db,
                url=database.url,
                monkeypatch=monkeypatch,
                migration=totals,
                rows=[
                    reservation("r1", "ann", "2026-03-01", 10),
                    reservation("r2", "ann", "2026-03-02", 20),
                    reservation("r3", "bob", "2026-03-01", 40),
                ],
            )
            for statement in (
                reservation("r4", "ann", "2026-04-01", 80),
                "UPDATE budget_reservations SET amount_picousd = 3, state = 'settled'"
                " WHERE id IN ('r1', 'r3')",
                f"UPDATE budget_reservations SET ended_at = {stamp} WHERE id = 'r2'",
                "DELETE FROM budget_reservations WHERE id = 'r4'",
                reservation("r5", "bob", "2026-03-01", 160),
            ):
                await db.execute(statement)
        finally:
            await db.disconnect()

    asyncio.run(run())
    kept = {
        (row["scope"], row["subject"], row["period"]): row["amount_picousd"]
        for row in database.query("SELECT * FROM budget_totals")
    }
    summed = {}
    for row in database.query(
        "SELECT user_id, day, month, amount_picousd FROM budget_reservations"
    ):
        for key in (
            ("global_day", "", row["day"]),
            ("user_day", row["user_id"], row["day"]),
            ("user_month", row["user_id"], row["month"]),
        ):
            summed[key] = summed.get(key, 0) + row["amount_picousd"]
    assert {key: amount for key, amount in kept.items() if amount} == summed
    assert summed[("user_month", "ann", "2026-03")] == 3 + 20
    assert summed[("global_day", "", "2026-03-01")] == 3 + 3 + 160
    assert kept[("user_month", "ann", "2026-04")] == 0  # inserted, then deleted


def test_a_users_costs_read_their_own_rows_once_migration_14_applies(database, monkeypatch):
    """Migration 14 over a ledger the old schema wrote, on both databases: a user's report
    (`/api/me/costs`) then reads `ix_generations_user_started`, the caller's rows alone, and
    sums what it summed before."""
    by_user = next(m for m in MIGRATIONS if m.statements is migrations._generations_by_user)
    rows = [
        "INSERT INTO generations (id, message_id, conversation_id, agent, attempt,"
        " requested_model, status, prompt_tokens, completion_tokens, reasoning_tokens,"
        " cached_tokens, cost_picousd, cost_source, started_at, user_id)"
        f" VALUES ('g{i}', 'm{i}', 'c{i % 3}', 'chat', 1, 'openai/gpt-4o', 'complete', 10, 5, 0,"
        f" 0, {1000 * (i + 1)}, 'usage', '2026-03-0{1 + i % 3} 10:00:00', '{user}')"
        for i, user in enumerate(["ann", "bob", "ann", "bob", "bob", "ann"])
    ]
    march = ReportRange(date(2026, 3, 1), date(2026, 3, 31), ("day",), "ann")

    async def run() -> tuple[str, list[dict]]:
        db = await _opened(database.url)
        try:
            await _migrate_over_rows(
                db, url=database.url, monkeypatch=monkeypatch, migration=by_user, rows=rows
            )
            sql = report_query(march, dialect=db.url.dialect).compile(
                dialect=sqlite.dialect() if is_sqlite(database.url) else postgresql.dialect(),
                compile_kwargs={"literal_binds": True},
            )
            async with db.connection() as connection, connection.transaction():
                if is_sqlite(database.url):
                    plan = await connection.fetch_all(f"EXPLAIN QUERY PLAN {sql}")
                    text = "\n".join(str(row[3]) for row in plan)
                else:
                    # Six rows: a whole-table read is rightly cheapest; with it ruled out, the
                    # planner says which index answers a user's report.
                    await connection.execute("SET LOCAL enable_seqscan = off")
                    plan = await connection.fetch_all(f"EXPLAIN {sql}")
                    text = "\n".join(row[0] for row in plan)
            return text, [row async for row in report(db, march)]
        finally:
            await db.disconnect()

    plan, found = asyncio.run(run())
    assert "ix_generations_user_started" in plan, plan
    assert [(row["day"], row["generations"], Decimal(row["cost_usd"])) for row in found] == [
        ("2026-03-01", 1, Decimal("1E-9")),
        ("2026-03-03", 2, Decimal("9E-9")),
    ]


def test_conversations_with_a_complete_reply_are_titled_once_migration_15_applies(
    database, monkeypatch
):
    """Migration 15 over conversations the old code wrote: those with a complete reply had
    their one title (or were renamed) and are settled; one whose replies all stopped or failed
    gets a title with its next complete reply."""
    titled = next(m for m in MIGRATIONS if m.statements is migrations._titled_conversations)
    stamp = "'2026-01-01 00:00:00'"
    replies = {"c1": "complete", "c2": "stopped", "c3": None}
    rows = []
    for conversation_id, status in replies.items():
        rows.append(
            "INSERT INTO conversations (id, user_id, agent, title, created_at, updated_at)"
            f" VALUES ('{conversation_id}', 'dev', 'chat', 't', {stamp}, {stamp})"
        )
        rows.append(
            "INSERT INTO messages (id, conversation_id, seq, role, content, status, agent,"
            f" created_at, updated_at) VALUES ('{conversation_id}-q', '{conversation_id}', 1,"
            f" 'user', 'q', 'complete', 'chat', {stamp}, {stamp})"
        )
        if status:
            rows.append(
                "INSERT INTO messages (id, conversation_id, seq, role, content, status, agent,"
                f" created_at, updated_at) VALUES ('{conversation_id}-a', '{conversation_id}',"
                f" 2, 'assistant', 'a', '{status}', 'chat', {stamp}, {stamp})"
            )

    _migrate_database_over_rows(database.url, monkeypatch=monkeypatch, migration=titled, rows=rows)

    found = database.query("SELECT id, titled FROM conversations ORDER BY id")
    assert [(row["id"], bool(row["titled"])) for row in found] == [
        ("c1", True),
        ("c2", False),
        ("c3", False),
    ]


def test_conversations_keep_their_last_reply_s_model_once_migration_17_applies(
    database, monkeypatch
):
    """Migration 17 over conversations the old schema wrote, on both databases: each gets the
    model its latest reply asked for (its next turn's, as before); one without a reply keeps
    null (the agent's default), and agent overrides allow nothing more than before."""
    chosen = next(m for m in MIGRATIONS if m.statements is migrations._chosen_models)
    conversation = (
        "INSERT INTO conversations (id, user_id, agent, title, created_at, updated_at,"
        " active_leaf_id) VALUES ('{id}', 'ann', 'chat', 't', '2026-03-01 10:00:00',"
        " '2026-03-01 10:00:00', '{leaf}')"
    )
    message = (
        "INSERT INTO messages (id, conversation_id, seq, role, content, status, agent,"
        " requested_model, created_at, updated_at, parent_id) VALUES ('{id}', '{c}', {seq},"
        " '{role}', 'x', 'complete', 'chat', {model}, '2026-03-01 10:00:00',"
        " '2026-03-01 10:00:00', {parent})"
    )
    rows = [
        conversation.format(id="c1", leaf="m4"),
        message.format(id="m1", c="c1", seq=1, role="user", model="NULL", parent="NULL"),
        message.format(
            id="m2", c="c1", seq=2, role="assistant", model="'openai/gpt-4o'", parent="'m1'"
        ),
        message.format(id="m3", c="c1", seq=3, role="user", model="NULL", parent="'m2'"),
        message.format(
            id="m4",
            c="c1",
            seq=4,
            role="assistant",
            model="'anthropic/claude-3.5-sonnet'",
            parent="'m3'",
        ),
        conversation.format(id="c2", leaf="m5"),
        message.format(id="m5", c="c2", seq=1, role="user", model="NULL", parent="NULL"),
        "INSERT INTO agent_overrides (agent, model, updated_at)"
        " VALUES ('chat', 'openai/gpt-4o-mini', '2026-03-01 10:00:00')",
    ]
    _migrate_database_over_rows(database.url, monkeypatch=monkeypatch, migration=chosen, rows=rows)
    found = database.query("SELECT id, model FROM conversations ORDER BY id")
    assert found == [
        {"id": "c1", "model": "anthropic/claude-3.5-sonnet"},
        {"id": "c2", "model": None},
    ]
    assert database.query("SELECT allowed_models FROM agent_overrides") == [
        {"allowed_models": None}
    ]


def test_generations_written_before_migration_18_have_no_saving_and_reports_still_sum(
    database, monkeypatch
):
    """Migration 18 over a ledger and an override the old schema wrote, on both databases: an
    old generation's saving is unknown (null: its prices then are not kept), a report counts it
    as nothing saved and sums what it summed before, and the override follows the agents file
    on prompt caching. On PostgreSQL the report's covering index carries the new column."""
    caching = next(m for m in MIGRATIONS if m.statements is migrations._prompt_caching)
    rows = [
        "INSERT INTO generations (id, message_id, conversation_id, agent, attempt,"
        " requested_model, status, prompt_tokens, completion_tokens, reasoning_tokens,"
        " cached_tokens, cost_picousd, cost_source, started_at, user_id)"
        f" VALUES ('g{i}', 'm{i}', 'c1', 'chat', 1, 'anthropic/claude-sonnet-4', 'complete',"
        f" 10, 5, 0, 4, {1000 * (i + 1)}, 'usage', '2026-03-01 10:00:00', 'ann')"
        for i in range(3)
    ]
    rows.append(
        "INSERT INTO agent_overrides (agent, model, updated_at)"
        " VALUES ('chat', 'openai/gpt-4o-mini', '2026-03-01 10:00:00')"
    )
    march = ReportRange(date(2026, 3, 1), date(2026, 3, 31), ("day",))

    async def run() -> list[dict]:
        db = await _opened(database.url)
        try:
            await _migrate_over_rows(
                db, url=database.url, monkeypatch=monkeypatch, migration=caching, rows=rows
            )
            return [row async for row in report(db, march)]
        finally:
            await db.disconnect()

    [found] = asyncio.run(run())
    assert (found["cached_tokens"], Decimal(found["cost_usd"])) == (12, Decimal("6E-9"))
    assert Decimal(found["cache_saved_usd"]) == 0
    saved = database.query("SELECT cache_saved_picousd, cache_discount_picousd FROM generations")
    assert saved == [{"cache_saved_picousd": None, "cache_discount_picousd": None}] * 3
    assert database.query("SELECT prompt_caching FROM agent_overrides") == [
        {"prompt_caching": None}
    ]
    if not is_sqlite(database.url):
        definitions = database.query(
            "SELECT indexdef FROM pg_indexes WHERE indexname IN"
            " ('ix_generations_started_at', 'ix_generations_user_started')"
        )
        assert len(definitions) == 2
        assert all("cache_saved_picousd" in d["indexdef"] for d in definitions), definitions
