"""The one way the store writes: a `Writer`, implemented once per backend.

    Writer (this protocol)
      ├── PostgresWriter  app/storage/postgres_writer.py: the pool, one transaction per write
      └── SQLiteWriter    app/storage/sqlite_writer.py: one connection on the event loop,
                          writes grouped into transactions
    both run a statement compiled once (app/storage/plans.py) straight on their driver

The shape of encode/databases' `interfaces.py` and `backends/`. A write is a list of steps,
applied in one transaction with no reads in between: what a write needs to know (the next
`seq` of a conversation, say) is computed by its statements. The aggregates
(`conversations`, `replies`, `ledger`, `config`) build the steps; the writer only applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.sql.dml import Insert


@dataclass(frozen=True, slots=True)
class Guard:
    """A step that must write a row (its RETURNING rows, or else its row count, tell): when it
    writes none, the whole write is rolled back and refused (`WriteRefused`). A conditional
    insert (a budget reservation) that gates the rest of its write."""

    statement: sa.Executable


class WriteRefused(Exception):
    """A write's `Guard` returned no row: nothing of the write was applied."""


# A statement, or one built once with bind parameters and the values for them, or a guard.
Step = sa.Executable | tuple[sa.Executable, dict[str, Any]] | Guard
Write = Sequence[Step]
# One list of rows per statement: the rows of its RETURNING clause, else empty.
Outcome = list[list[Any]]


class Writer(Protocol):
    def insert(self, table: sa.Table) -> Insert:
        """The backend's INSERT, the one with `on_conflict_do_update` (an upsert)."""
        ...

    async def write(self, steps: Write) -> Outcome:
        """Apply `steps` in one transaction; the rows of each one's RETURNING clause. Raises
        `WriteRefused`, having applied nothing, when a `Guard` returns no row."""
        ...

    async def read_row(self, statement: sa.Select[Any], values: dict[str, Any]) -> Any | None:
        """The first row of a SELECT built once with bind parameters (None: no row). For a
        primary-key read on the hot path: on SQLite it runs on the writer's own connection, on
        the event loop, rather than through a pool thread (the override read of every turn cost
        ~1 ms of CPU per reply through `databases`, 9% of the server's busy time at 50
        streams: py-spy on `python -m bench --levels 50`'s server, docs/benchmarks.md,
        seventh round)."""
        ...

    async def close(self) -> None:
        """Let the writes already handed over finish, then release what the writer holds."""
        ...


# The statements of the writes every reply makes are built once, with bind parameters, and
# executed with a dict of values: SQLAlchemy then finds each one's compiled form in its cache
# at once, where building a statement with `.values(...)` per call cost about five times its
# execution (timed by hand on SQLite, docs/benchmarks.md step 1: 75-105 us against 13-19 us a
# statement; `python -m bench` measures the CPU per reply around it).
def binds(*names: str) -> dict[str, sa.BindParameter[Any]]:
    """A bind parameter for each column name, for a statement built once (a `(statement,
    values)` step)."""
    return {name: sa.bindparam(name) for name in names}
