"""PostgreSQL's writer: each write one transaction on a connection of the `databases` pool.

PostgreSQL takes concurrent writers itself (row locks, MVCC), so there is nothing to serialize or
group here, unlike SQLite (`app/storage/sqlite_writer.py`). What is shared with it: a statement is
compiled once (`app/storage/plans.py`) and run straight on asyncpg, which prepares each SQL text
once per connection. Through `databases`, every statement was compiled by SQLAlchemy anew, and a
`(statement, values)` step was first copied to carry its values: py-spy on the production profile's
PostgreSQL target at 20 streams (`python -m bench --profile production --levels 20`,
docs/benchmarks.md, "What this round cut") found 59% of the server's busy time in this writer, 18%
in that copy alone.

A write still takes its connection from `databases` (the task's own, if it holds one), so it
shares the pool, and a write made inside a `databases` transaction is a savepoint of it.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import sqlalchemy as sa
from databases import Database
from databases.core import Connection
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql.dml import Insert

from app.storage.plans import Plans
from app.storage.writer import Guard, Outcome, Step, Write, WriteRefused


class PostgresWriter:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._dialect = PGDialect_asyncpg(paramstyle="numeric_dollar")
        self._plans = Plans(returning=True)

    def insert(self, table: sa.Table) -> Insert:
        return postgresql.insert(table)

    async def write(self, steps: Write) -> Outcome:
        async with self._database.connection() as connection:
            driver: asyncpg.Connection = connection.raw_connection
            if len(steps) == 1 and not driver.is_in_transaction():
                # One statement is a transaction of its own: BEGIN and COMMIT around it would
                # be two more round trips (a turn's write is one: app/storage/turn_call.py).
                # A Guard's statement that writes no row has nothing to roll back.
                return [await self._run(connection, driver, steps[0])]
            async with driver.transaction():  # WriteRefused, as any error, rolls it back
                return [await self._run(connection, driver, step) for step in steps]

    async def read_row(self, statement: sa.Select[Any], values: dict[str, Any]) -> Any | None:
        plan = self._plans.of(statement, self._dialect)
        assert plan is not None, "a read_row statement must compile to a plan"
        async with self._database.connection() as connection:
            row = await connection.raw_connection.fetchrow(plan.sql, *plan.parameters(values))
        return None if row is None else plan.row(row)

    async def close(self) -> None:
        """Nothing of its own to release: the pool is the `Database`'s, closed by its owner."""

    async def _run(
        self, connection: Connection, driver: asyncpg.Connection, step: Step
    ) -> list[Any]:
        guarded = isinstance(step, Guard)
        if guarded:
            step = step.statement
        statement, values = step if isinstance(step, tuple) else (step, {})
        plan = self._plans.of(statement, self._dialect)
        if plan is None:
            rows, written = await _through_databases(connection, statement, values)
        elif plan.returns_rows:
            records = await driver.fetch(plan.sql, *plan.parameters(values))
            rows = [plan.values(record) for record in records]
            written = len(rows)
        else:
            status = await driver.execute(plan.sql, *plan.parameters(values))
            rows, written = [], _row_count(status)
        if guarded and written < 1:
            raise WriteRefused()  # rolls the transaction back
        return rows


def _row_count(status: str) -> int:
    """The rows a statement wrote, from its command tag ("INSERT 0 1", "UPDATE 3")."""
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else 0


async def _through_databases(
    connection: Connection, statement: sa.Executable, values: dict[str, Any]
) -> tuple[list[Any], int]:
    """A statement with no plan, run by SQLAlchemy and `databases` on the write's connection:
    its rows and how many it wrote (its rows when it returns some; `databases` gives no row
    count, so a `Guard` without a RETURNING clause must have a plan)."""
    if values:
        statement = _with_values(statement, values)
    if statement.exported_columns:
        rows: list[Any] = await connection.fetch_all(statement)
        return rows, len(rows)
    await connection.execute(statement)
    return [], 1


def _with_values(statement: sa.Executable, values: dict[str, Any]) -> sa.Executable:
    """A copy of `statement` with its bind parameters set (for `databases`, which takes no
    separate values for a statement)."""

    def set_value(bind: sa.BindParameter[Any]) -> None:
        if bind.key in values:
            bind.value, bind.required = values[bind.key], False

    return sa.sql.visitors.cloned_traverse(statement, {}, {"bindparam": set_value})
