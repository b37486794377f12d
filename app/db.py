"""The database connection: which backend a URL means, and how to open it safely.

SQLite (the default) is opened in WAL mode with a busy timeout, and the store serializes its
writes in-process, so many streams ending at the same moment cannot trip over each other.
"""

from __future__ import annotations

from pathlib import Path

from databases import Database


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


async def open_database(url: str, *, busy_timeout: float = 30.0) -> Database:
    if is_sqlite(url):
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        # `timeout` is sqlite3's busy timeout: wait for another writer instead of failing at once.
        database = Database(url, timeout=busy_timeout)
        await database.connect()
        # WAL is a property of the file: set once, every later connection gets it.
        await database.execute("PRAGMA journal_mode=WAL")
        return database
    database = Database(url)
    await database.connect()
    return database
