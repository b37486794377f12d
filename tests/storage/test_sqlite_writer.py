"""SQLite's one writer (`app.storage.sqlite_writer`): grouped writes on real database files.

What callers rely on: each write is all or nothing, a bad write fails alone even when it shares
a transaction with others, another process holding the write lock is waited for (up to the busy
timeout, then a clear error), and a write whose caller stops waiting is still carried out.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from app.storage import conversations, replies
from app.storage.ledger import upsert_generation_statement
from app.storage.plans import Plan
from app.storage.sqlite_writer import SQLiteWriter
from app.storage.writer import Guard, WriteRefused
from tests.support import migrated_store, run_async

notes = sa.table("notes", sa.column("id"), sa.column("text"))


@pytest.fixture
def path(tmp_path) -> Path:
    path = tmp_path / "writer.db"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    return path


def texts(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT text FROM notes ORDER BY id")]


def add(text: str | None, *, id: int | None = None):
    return notes.insert().values(id=id, text=text).returning(notes.c.id)


def test_concurrent_writes_all_land_and_a_bad_one_fails_alone(path):
    async def scenario():
        writer = SQLiteWriter(path, busy_timeout=1.0)
        try:
            return await asyncio.gather(
                *(writer.write([add(f"a{i}"), add(f"b{i}")]) for i in range(20)),
                writer.write([add("lost"), add(None)]),  # NOT NULL: the whole write fails
                writer.write([(notes.insert().values(text=sa.bindparam("t")), {"t": "bound"})]),
                return_exceptions=True,
            )
        finally:
            await writer.close()

    *good, bad, bound = run_async(scenario())
    assert [outcome[1][0][0] for outcome in good] == [2 * i + 2 for i in range(20)]
    assert isinstance(bad, sa.exc.IntegrityError)
    assert bound == [[]]
    assert texts(path) == [f"{p}{i}" for i in range(20) for p in "ab"] + ["bound"]


def test_a_guard_that_returns_no_row_refuses_its_write_alone(path):
    """A `Guard` (a budget reservation's conditional insert) that inserts nothing rolls back
    its whole write, steps before it included, and the writes grouped with it still land."""
    fits = notes.insert().from_select(
        ["id", "text"], sa.select(sa.literal(100), sa.literal("fits"))
    )

    def conditional(text: str, *, when: bool):
        row = sa.select(sa.literal(None, sa.Integer), sa.literal(text)).where(sa.literal(when))
        return Guard(notes.insert().from_select(["id", "text"], row).returning(notes.c.id))

    async def scenario():
        writer = SQLiteWriter(path, busy_timeout=1.0)
        try:
            return await asyncio.gather(
                writer.write([add("before")]),
                writer.write([add("refused first"), conditional("no", when=False), fits]),
                writer.write([conditional("yes", when=True), add("after yes")]),
                return_exceptions=True,
            )
        finally:
            await writer.close()

    before, refused, accepted = run_async(scenario())
    assert before == [[(1,)]] and isinstance(refused, WriteRefused)
    assert accepted[0] == [(2,)]
    assert texts(path) == ["before", "yes", "after yes"]


def test_another_writer_is_waited_for_then_given_up_on(path):
    async def scenario():
        other = sqlite3.connect(path, isolation_level=None)  # "another process"
        writer = SQLiteWriter(path, busy_timeout=0.5)
        loop = asyncio.get_running_loop()
        try:
            other.execute("BEGIN IMMEDIATE")
            loop.call_later(0.2, other.execute, "COMMIT")
            waited = await writer.write([add("after the other")])
            other.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                    await writer.write([add("never")])
            finally:
                other.execute("ROLLBACK")
            return waited
        finally:
            await writer.close()
            other.close()

    assert run_async(scenario()) == [[(1,)]]
    assert texts(path) == ["after the other"]


def test_a_write_whose_caller_is_cancelled_still_lands(path):
    async def scenario():
        writer = SQLiteWriter(path, busy_timeout=1.0)
        task = asyncio.create_task(writer.write([add("kept")]))
        await asyncio.sleep(0)  # handed over
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await writer.close()

    run_async(scenario())
    assert texts(path) == ["kept"]


def _sample(bind: sa.BindParameter) -> object:
    kind_of = bind.type.impl_instance if isinstance(bind.type, sa.TypeDecorator) else bind.type
    try:
        kind = kind_of.python_type
    except NotImplementedError:  # an untyped parameter, like the subquery's `seq_of`
        kind = str
    # Not UTC, so a timestamp sent without the store's conversion would not match.
    stamp = datetime(2026, 11, 22, 10, 30, 1, 250, tzinfo=timezone(timedelta(hours=2)))
    return {str: f"v-{bind.key}", int: 7, float: 0.25, bool: True, datetime: stamp}[kind]


@pytest.mark.parametrize(
    "statement",
    [
        conversations.NEW_CONVERSATION,
        conversations.TOUCH_CONVERSATION,
        conversations.TURN_IN_CONVERSATION,
        replies.NEW_MESSAGE,
        replies.CHECKPOINT_MESSAGE,
        replies.FINISH_MESSAGE,
        upsert_generation_statement(sqlite_dialect.insert),
    ],
    ids=[
        "new_conversation",
        "touch",
        "turn",
        "new_message",
        "checkpoint",
        "finish",
        "upsert_generation",
    ],
)
def test_a_reply_s_statements_reach_sqlite_as_sqlalchemy_would_send_them(tmp_path, statement):
    """The writer executes a built-once statement itself, skipping SQLAlchemy's execution but
    not its conversions: the same SQL, the same parameters (timestamps in UTC, as text)."""
    path = tmp_path / "store.db"

    async def create_schema() -> None:
        async with migrated_store(f"sqlite:///{path}"):
            pass

    run_async(create_schema())
    engine = sa.create_engine(f"sqlite:///{path}")
    sent: list[tuple[str, tuple]] = []
    sa.event.listen(
        engine, "before_cursor_execute", lambda *args: sent.append((args[2], tuple(args[3])))
    )
    compiled = statement.compile(dialect=engine.dialect)
    values = {bind.key: _sample(bind) for bind in compiled.binds.values() if bind.value is None}
    with engine.connect() as connection, connection.begin():
        connection.execute(statement, values)
    plan = Plan.of(statement, engine.dialect, returning=False)
    assert plan is not None
    assert sent == [(plan.sql, tuple(plan.parameters(values)))]
    assert any(isinstance(value, str) and "08:30:01.000250" in value for value in sent[0][1])


def test_a_built_once_statement_missing_a_value_fails_as_in_sqlalchemy(path):
    statement = notes.insert().values(text=sa.bindparam("t"))

    async def scenario():
        writer = SQLiteWriter(path, busy_timeout=1.0)
        try:
            with pytest.raises(sa.exc.ArgumentError, match="'t'"):
                await writer.write([(statement, {"t": "kept"}), (statement, {})])
            await writer.write([(statement, {"t": "next"})])
        finally:
            await writer.close()

    run_async(scenario())
    assert texts(path) == ["next"]  # all or nothing: the first insert went with the second


def test_a_hot_path_read_gives_what_sqlalchemy_would_and_sees_every_commit(tmp_path):
    """`read_row` on the writer's connection: values converted as through `databases` (the
    override read every turn makes without server budgets), a committed write seen at once."""
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def scenario():
        async with migrated_store(url) as store:
            budgets = store.budgets
            before = await budgets.override_limits(user_id="ann")
            await budgets.put_override(
                user_id="ann",
                daily_overridden=True,
                daily_picousd=5 * 10**12,
                monthly_overridden=False,
                monthly_picousd=None,
            )
            fast = await budgets.override_limits(user_id="ann")
            slow = await budgets.override(user_id="ann")
            return before, fast, slow

    before, fast, slow = run_async(scenario())
    assert before is None
    assert fast == {
        "daily_overridden": True,
        "daily_picousd": 5 * 10**12,
        "monthly_overridden": False,
        "monthly_picousd": None,
    }
    assert fast["daily_overridden"] is True and fast["monthly_overridden"] is False
    assert {key: slow[key] for key in fast} == fast
