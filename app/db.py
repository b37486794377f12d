"""The database connection: which backend a URL means, and how to open it safely.

SQLite (the default) is opened in WAL mode with a busy timeout, and the store serializes its
writes in-process, so many streams ending at the same moment cannot trip over each other.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from databases import Database


class _WALConnection(sqlite3.Connection):
    """Every connection commits without waiting for fsync (safe in WAL mode, see below).

    `databases` opens a connection per task, so a per-connection PRAGMA has to live here.
    With WAL, synchronous=NORMAL keeps the database consistent after a crash or power loss and
    may lose only the last commits before a power loss; FULL would fsync on every commit, and
    three commits per reply, serialized, then cap replies/s (measured in `bench/`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA synchronous=NORMAL")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


async def open_database(url: str, *, busy_timeout: float = 30.0) -> Database:
    if is_sqlite(url):
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        # `timeout` is sqlite3's busy timeout: wait for another writer instead of failing at once.
        database = Database(url, timeout=busy_timeout, factory=_WALConnection)
        await database.connect()
        # WAL is a property of the file: set once, every later connection gets it.
        await database.execute("PRAGMA journal_mode=WAL")
        return database
    database = Database(url)
    await database.connect()
    return database
