"""PostgreSQL's writer (`app.storage.postgres_writer`) on a real server: statements compiled once
and run on asyncpg, what has no plan through `databases` on the same connection, all of a
write in one transaction. PostgreSQL only (TEST_POSTGRES_URL; scripts/test starts one)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import dialect as pg_dialect

from app.storage.database import open_database
from app.storage.postgres_writer import PostgresWriter
from app.storage.writer import Guard, WriteRefused
from tests.support import run_async

pytestmark = pytest.mark.skipif(
    not os.environ.get("TEST_POSTGRES_URL"), reason="PostgreSQL only: set TEST_POSTGRES_URL"
)

metadata = sa.MetaData()
notes = sa.Table(
    "notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("text", sa.String, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("extra", sa.JSON),
    sa.Column("price", sa.Numeric(12, 4)),
    sa.Column("tag", sa.String),
)
ADD = notes.insert().values(
    id=sa.bindparam("id"),
    text=sa.bindparam("text"),
    at=sa.bindparam("at"),
    extra=sa.bindparam("extra"),
    price=sa.bindparam("price"),
    tag=sa.bindparam("tag"),
)
ADD_RETURNING = ADD.returning(notes.c.id, notes.c.at, notes.c.extra, notes.c.price)
# Writes one row only if no note has that text yet: a guard by row count (no RETURNING).
ADD_IF_NEW = notes.insert().from_select(
    ["id", "text", "tag"],
    sa.select(
        sa.bindparam("id", sa.Integer), sa.bindparam("text", sa.String), sa.literal("t")
    ).where(~sa.exists().where(notes.c.text == sa.bindparam("same", sa.String))),
)
READ = sa.select(notes.c.text, notes.c.at, notes.c.price).where(notes.c.id == sa.bindparam("id"))
AT = datetime(2026, 11, 29, 8, 30, 1, 250, tzinfo=UTC)


def values(id: int, text: str = "t") -> dict:
    return {
        "id": id,
        "text": text,
        "at": AT,
        "extra": {"k": [1]},
        "price": Decimal("1.25"),
        "tag": "x",
    }


@pytest.fixture
def scenario(database):
    """Runs `work(writer, db)` against a fresh `notes` table of the test database."""

    def run(work):
        async def go():
            db = await open_database(database.url, max_size=2)
            try:
                await db.execute("DROP TABLE IF EXISTS notes")
                await db.execute(str(sa.schema.CreateTable(notes).compile(dialect=pg_dialect())))
                return await work(PostgresWriter(db), db)
            finally:
                await db.disconnect()

        return run_async(go())

    return run


def test_rows_and_values_are_what_sqlalchemy_would_give(scenario):
    """What the app read through `databases` before, and JSON decoded as SQLAlchemy does."""

    async def work(writer, db):
        [returned] = await writer.write([(ADD_RETURNING, values(1))])
        read = await writer.read_row(READ, {"id": 1})
        through_databases = await db.fetch_one(READ.params(id=1))
        return returned, read, dict(through_databases._mapping)

    returned, read, through_databases = scenario(work)

    assert returned == [(1, AT, {"k": [1]}, Decimal("1.2500"))]
    assert read == through_databases == {"text": "t", "at": AT, "price": Decimal("1.2500")}


@pytest.mark.parametrize("returning", [False, True], ids=["by row count", "by its rows"])
def test_a_refused_guard_rolls_back_the_whole_write(scenario, returning):
    guard = ADD_IF_NEW.returning(notes.c.id) if returning else ADD_IF_NEW

    async def work(writer, db):
        await writer.write([(ADD, values(1, "taken"))])
        with pytest.raises(WriteRefused):
            await writer.write(
                [(ADD, values(2)), Guard((guard, {"id": 3, "text": "x", "same": "taken"}))]
            )
        admitted = await writer.write(
            [(ADD, values(4)), Guard((guard, {"id": 5, "text": "new", "same": "new"}))]
        )
        rows = await db.fetch_all("SELECT id FROM notes ORDER BY id")
        return admitted, [row[0] for row in rows]

    admitted, ids = scenario(work)

    assert admitted == [[], [(5,)] if returning else []]
    assert ids == [1, 4, 5]  # nothing of the refused write: not its first insert either


def test_a_statement_with_no_plan_runs_in_the_same_transaction(scenario):
    """An IN list (an expanding parameter, rendered per call): that statement goes through
    `databases`, on the write's own connection, and is rolled back with the rest."""
    drop = notes.delete().where(notes.c.id.in_([1, 2]))

    async def work(writer, db):
        await writer.write([(ADD, values(1)), (ADD, values(2)), (ADD, values(3, "keep"))])
        with pytest.raises(WriteRefused):
            await writer.write([drop, Guard((ADD_IF_NEW, {"id": 4, "text": "x", "same": "keep"}))])
        kept = [row[0] for row in await db.fetch_all("SELECT id FROM notes ORDER BY id")]
        await writer.write([drop])
        return kept, [row[0] for row in await db.fetch_all("SELECT id FROM notes")]

    kept, after = scenario(work)

    assert (kept, after) == ([1, 2, 3], [3])


def test_a_write_inside_a_databases_transaction_goes_with_it(scenario):
    async def work(writer, db):
        transaction = await db.transaction()
        await writer.write([(ADD, values(1))])
        await transaction.rollback()
        await writer.write([(ADD, values(2))])
        return [row[0] for row in await db.fetch_all("SELECT id FROM notes")]

    assert scenario(work) == [2]
