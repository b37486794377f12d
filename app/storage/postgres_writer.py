"""PostgreSQL's writer: each write one transaction on a connection of the `databases` pool.

PostgreSQL takes concurrent writers itself (row locks, MVCC), so there is nothing to serialize
or group here, unlike SQLite (`app/storage/sqlite_writer.py`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import Insert

from app.storage.writer import Guard, Outcome, Write, WriteRefused


class PostgresWriter:
    def __init__(self, database: Database) -> None:
        self._database = database

    def insert(self, table: sa.Table) -> Insert:
        return postgresql.insert(table)

    async def write(self, steps: Write) -> Outcome:
        outcome: Outcome = []
        async with self._database.transaction():
            for step in steps:
                guarded = isinstance(step, Guard)
                if guarded:
                    step = step.statement
                statement = _with_values(*step) if isinstance(step, tuple) else step
                if statement.exported_columns:
                    rows = await self._database.fetch_all(statement)
                    if guarded and not rows:
                        raise WriteRefused()  # rolls the transaction back
                    outcome.append(rows)
                else:
                    await self._database.execute(statement)
                    outcome.append([])
        return outcome

    async def read_row(self, statement: sa.Select[Any], values: dict[str, Any]) -> Any | None:
        row = await self._database.fetch_one(_with_values(statement, values))
        return None if row is None else dict(row._mapping)

    async def close(self) -> None:
        """Nothing of its own to release: the pool is the `Database`'s, closed by its owner."""


def _with_values(statement: sa.Executable, values: dict[str, Any]) -> sa.Executable:
    """A copy of `statement` with its bind parameters set (for `databases`, which takes no
    separate values for a statement)."""

    def set_value(bind: sa.BindParameter[Any]) -> None:
        if bind.key in values:
            bind.value, bind.required = values[bind.key], False

    return sa.sql.visitors.cloned_traverse(statement, {}, {"bindparam": set_value})
