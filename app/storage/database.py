"""The database connection: which backend a URL means, and how to open it safely.

SQLite (the default) is opened in WAL mode with a busy timeout, and the store serializes its
writes in-process, so many streams ending at the same moment cannot trip over each other.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
from databases import Database
from sqlalchemy.engine import make_url

from app.settings import Settings

# What connecting raises when the database is not there to be had: refused or unresolvable
# (OSError), no answer in DATABASE_CONNECT_TIMEOUT, refused credentials or a database that
# does not exist (asyncpg), an SQLite file that cannot be opened or made.
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """What a connection released to the pool is reset with, past asyncpg's own rollback of a
    transaction left open: nothing. asyncpg's default also sends `SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every release, one more
    round trip awaited after every write and read (`python -m bench.round_trips` counted it
    after each of a turn's). This app leaves none of that behind: its advisory locks are
    transaction-scoped, its cursors live inside transactions, it never LISTENs nor SETs a
    session variable."""


class DatabaseUnreachable(Exception):
    """The database could not be connected to. The message says where and why in one line,
    never the URL's password."""

    def __init__(self, url: str, cause: BaseException) -> None:
        parsed = make_url(url)
        where = parsed.database if is_sqlite(url) else f"{parsed.host}:{parsed.port or 5432}"
        reason = " ".join(f"{type(cause).__name__}: {cause}".split())
        if parsed.password:
            reason = reason.replace(parsed.password, "***")
        super().__init__(f"cannot connect to the database ({where}): {reason}")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


async def open_database(
    url: str,
    *,
    busy_timeout: float = 30.0,
    min_size: int = 1,
    max_size: int = 5,
    connect_timeout: float = 10.0,
    command_timeout: float | None = None,
) -> Database:
    """Connect; on PostgreSQL through an asyncpg pool of `min_size`..`max_size` connections.
    DatabaseUnreachable when it cannot be."""
    try:
        return await _connect(
            url,
            busy_timeout=busy_timeout,
            min_size=min_size,
            max_size=max_size,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
        )
    except UNREACHABLE as exc:
        raise DatabaseUnreachable(url, exc) from exc


async def _connect(
    url: str,
    *,
    busy_timeout: float,
    min_size: int,
    max_size: int,
    connect_timeout: float,
    command_timeout: float | None,
) -> Database:
    if is_sqlite(url):
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        # `timeout` is sqlite3's busy timeout: wait for another writer instead of failing at once.
        database = Database(url, timeout=busy_timeout)
        await database.connect()
        # WAL is a property of the file: set once, every later connection gets it.
        await database.execute("PRAGMA journal_mode=WAL")
        return database
    database = Database(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=command_timeout or None,
        reset=_keep_session,
    )
    await database.connect()
    return database


async def connect_database(settings: Settings) -> Database:
    """The app's database, with the pool size and timeouts the settings give."""
    return await open_database(
        settings.database_url,
        busy_timeout=settings.database_busy_timeout,
        min_size=settings.database_pool_min,
        max_size=settings.database_pool_max,
        connect_timeout=settings.database_connect_timeout,
        command_timeout=settings.database_command_timeout,
    )
