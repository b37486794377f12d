"""SQLite's one writer: one connection, the writes committed in groups, right on the event loop.

SQLite runs one write transaction at a time. Through `databases`' aiosqlite backend, each statement,
BEGIN and COMMIT of a write was a round trip between the event loop and a connection thread, and
each statement was compiled by SQLAlchemy anew. Measured with `python -m bench` (docs/benchmarks.md
step 1), that was over a third of the server's CPU per reply, and moving the whole transaction to a
thread did not help: the thread waits for the GIL (up to the 5 ms switch interval) each time SQLite
hands control back, so a three-statement write took 30 ms under load. So here:

- a write is a list of statements (each with its values, or none), applied in one
  transaction, with no reads in between (what a write needs to know, like the next `seq`, is
  computed by its statements);
- the writes queued since the last commit go into one transaction (group commit): one BEGIN,
  one COMMIT for them all;
- they run on the event loop itself: a reply's writes are a few hundred microseconds of CPU,
  which a thread would not save, only delay;
- a statement built once and given its values (a `(statement, values)` step: the writes every
  reply makes) is compiled once to SQL and its parameters' converters, then executed straight
  on the sqlite3 connection, without SQLAlchemy's execution machinery around it (its
  context, parameter dict, result object): a reply's three writes cost 0.36 ms of CPU one
  transaction each, against 0.57 through SQLAlchemy (500 replies timed through the store by
  hand, docs/benchmarks.md step 10; `python -m bench` measures the CPU per reply around it);
- the loop never waits on another process's lock: BEGIN IMMEDIATE is tried with no busy
  timeout, and while another writer holds the lock the group waits in `asyncio.sleep`, up to
  the busy timeout, instead of in SQLite's busy handler;
- if a group fails, its writes are tried again one per transaction, so a bad write (or one its
  `Guard` refuses) fails alone.

A write handed over is carried out even if its caller stops waiting (a cancelled request, a
shutdown): what a reply saves is never dropped halfway.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.dml import Insert

from app.storage.plans import Plans
from app.storage.writer import Guard, Outcome, Step, Write, WriteRefused

FIRST_RETRY_DELAY = 0.001
MAX_RETRY_DELAY = 0.05


class SQLiteWriter:
    def __init__(self, path: Path, *, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._connection: sa.Connection | None = None
        self._queue: list[tuple[Write, asyncio.Future[Outcome]]] = []
        self._committing: asyncio.Task[None] | None = None
        self._plans = Plans(returning=False)

    def insert(self, table: sa.Table) -> Insert:
        return sqlite.insert(table)

    async def write(self, steps: Write) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((steps, future))
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_queued(), name="sqlite-writer")
        # Shielded: the write goes on if the caller is cancelled; it just stops waiting for it.
        return await asyncio.shield(future)

    async def read_row(self, statement: sa.Select[Any], values: dict[str, Any]) -> Any | None:
        # Between transactions: this connection is only ever in one within `_transaction`,
        # which never awaits once BEGIN has succeeded. A read sees every committed write (WAL).
        connection = self._connect()
        plan = self._plans.of(statement, connection.dialect)
        assert plan is not None, "a read_row statement must compile to a plan"
        driver = connection.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        row = driver.execute(plan.sql, plan.parameters(values)).fetchone()
        return None if row is None else plan.row(row)

    async def close(self) -> None:
        """Let the queued writes commit, then close the connection."""
        while self._committing is not None:
            await asyncio.shield(self._committing)
        if self._connection is not None:
            engine = self._connection.engine
            self._connection.close()
            engine.dispose()
            self._connection = None

    async def _commit_queued(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue, []
                outcomes = await self._apply([steps for steps, _ in group])
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if future.cancelled():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._committing = None

    async def _apply(self, writes: list[Write]) -> list[Outcome | Exception]:
        try:
            return await self._transaction(writes)
        except _Locked as locked:  # waited the whole busy timeout: the others would too
            return [locked.error] * len(writes)
        except Exception as exc:
            if len(writes) == 1:
                return [exc]
        outcomes: list[Outcome | Exception] = []
        for write in writes:
            outcomes.extend(await self._apply([write]))
        return outcomes

    async def _transaction(self, writes: list[Write]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_timeout
        delay = FIRST_RETRY_DELAY
        while True:
            connection = self._connect()
            try:
                transaction = connection.begin()
            except sa.exc.OperationalError as exc:
                if not _is_busy(exc) or loop.time() + delay > deadline:
                    raise _Locked(exc) from exc
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_RETRY_DELAY)
                continue
            with transaction:
                return [[self._run(connection, step) for step in steps] for steps in writes]

    def _run(self, connection: sa.Connection, step: Step, *, guarded: bool = False) -> list[Any]:
        if isinstance(step, Guard):
            # Rolls back the group when it writes nothing; its writes are then tried one per
            # transaction (see `_apply`), so only this one is refused.
            return self._run(connection, step.statement, guarded=True)
        if isinstance(step, tuple):
            statement, values = step
            plan = self._plans.of(statement, connection.dialect)
            if plan is not None:
                driver = connection.connection.driver_connection
                assert isinstance(driver, sqlite3.Connection)
                cursor = driver.execute(plan.sql, plan.parameters(values))
                if guarded and cursor.rowcount < 1:
                    raise WriteRefused()
                return []
            result = connection.execute(statement, values)
        else:
            result = connection.execute(step)
        rows = result.all() if result.returns_rows else []
        if guarded and not rows and result.rowcount < 1:
            raise WriteRefused()
        return rows

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        # In WAL mode, NORMAL syncs at checkpoints rather than at every commit: a commit
        # survives the process being killed, though not a power cut. A commit's fsync would
        # otherwise block the event loop each time (measured by hand: 175 us at best, 16 ms
        # at p95 with the disk busy; docs/benchmarks.md step 1).
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _connect(self) -> sa.Connection:
        if self._connection is None:
            engine = sa.create_engine(
                "sqlite://",
                # Autocommit at the driver level, so the BEGIN below is the only one (the
                # pysqlite recipe of SQLAlchemy's SQLite docs); no busy timeout (see above).
                creator=self._open,
                poolclass=sa.pool.StaticPool,
            )
            # IMMEDIATE: the write lock is taken at BEGIN, so a busy database shows there,
            # before any statement ran, and a transaction never fails halfway for want of it.
            sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            self._connection = engine.connect()
        return self._connection


class _Locked(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _is_busy(exc: sa.exc.OperationalError) -> bool:
    return getattr(exc.orig, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )
