"""SQLite's one writer (`app.sqlite_writer`): grouped writes on real database files.

What callers rely on: each write is all or nothing, a bad write fails alone even when it shares
a transaction with others, another process holding the write lock is waited for (up to the busy
timeout, then a clear error), and a write whose caller stops waiting is still carried out.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.sqlite_writer import SQLiteWriter
from tests.support import run_async

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
