"""When the database is away: what says so (`is_unavailable`), how a loop tells of it
(`Outage`): one warning when it goes, one info line when it is back, not a traceback a beat;
and the periodic loop that keeps beating through it (`tend`).

"Away" is the database not answering at all, for a while: PostgreSQL refusing or cutting
connections (stopped, restarting, failed over, out of connections), SQLite's file locked past
DATABASE_BUSY_TIMEOUT by another process, or its disk read-only, full or failing. Callers get
`503 database_unavailable` with `Retry-After` meanwhile (app/errors.py); live replies carry on
and are saved once it is back (app/replies/runs.py). A bug (a bad statement, a constraint) is
not an outage and is still logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import sqlalchemy as sa

log = logging.getLogger(__name__)

# What a caller is told to wait: about the time PostgreSQL takes to restart or fail over.
RETRY_AFTER_SECONDS = 5

# SQLite's primary result codes of a file that cannot be used now, as opposed to a bad query.
_SQLITE_AWAY = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_FULL,
}

# PostgreSQL's classes 08 (connection exception), 53 (insufficient resources: too many
# connections) and 57 (operator intervention: shutting down, starting up, a cancelled query).
_POSTGRES_AWAY = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
)

# What the drivers raise with no server to talk to: refused, reset, timed out, no such host.
_NETWORK_AWAY = (ConnectionError, TimeoutError, socket.gaierror)

# The classes app/errors.py hands to `is_unavailable` (the rest are never an outage).
CANDIDATES: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sqlite3.Error,
    sa.exc.DBAPIError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is away (see the module's docstring)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(current, _NETWORK_AWAY + _POSTGRES_AWAY):
            return True
        if isinstance(current, asyncpg.InterfaceError) and "connection is closed" in str(current):
            return True
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            return code is not None and code & 0xFF in _SQLITE_AWAY
        # SQLAlchemy wraps the driver's error (`orig`); `databases` and asyncpg chain theirs.
        current = getattr(current, "orig", None) or current.__cause__
        seen += 1
    return False


def describe(exc: BaseException) -> str:
    """One line for a log: the error's class and message, never a traceback."""
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


class Outage:
    """The state of one background loop's database: `failed` on each error, `ok` on each
    success. Logs one warning as the database goes and one info line as it comes back, per
    loop and process, however many beats fail in between."""

    def __init__(self, what: str) -> None:
        self.what = what  # what waits: "the heartbeat", "checkpoints", ...
        self.down = False

    def failed(self, exc: BaseException) -> bool:
        """Whether `exc` is the database being away (told once); False for anything else, which
        the caller reports as the bug it is."""
        if not is_unavailable(exc):
            return False
        if not self.down:
            self.down = True
            log.warning("database unavailable (%s): %s waits for it", describe(exc), self.what)
        return True

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.info("database is back: %s resumes", self.what)


async def tend(
    beat: Callable[[], Coroutine[Any, Any, object]],
    *,
    outage: Outage,
    interval: float,
    stop: asyncio.Event,
) -> None:
    """Run `beat` now, then every `interval` seconds, until `stop` is set. A beat that fails
    does not end the loop: the database being away is told through `outage` (once as it goes,
    once as it is back), anything else is logged with its traceback, and the next beat comes
    on time either way. A background loop's body (the replies' heartbeat and sweep, the jobs')."""
    while True:
        try:
            # A task a beat: `databases` keeps a connection per task, and one the database cut
            # mid-release stays unusable to its task for good (seen with PostgreSQL stopped:
            # every later beat failed, "Connection is already acquired").
            await asyncio.create_task(beat())
            outage.ok()
        except Exception as exc:  # a database hiccup must not end the loop
            if not outage.failed(exc):
                log.exception("%s failed", outage.what)
        # Not cancelled at shutdown but told to stop, so no query is cut off mid-flight.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
            return


class _OneLine(logging.Filter):
    """asyncpg's pool logs its failed reconnections (backing off from 1 s to 60 s) with their
    traceback: while the database is away that says nothing the first line does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.exc_info
            and record.exc_info[1] is not None
            and is_unavailable(record.exc_info[1])
        ):
            record.msg = f"{record.getMessage()} ({describe(record.exc_info[1])})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def quiet_pool_reconnections() -> None:
    """Install `_OneLine` on asyncpg's pool logger, once per process."""
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OneLine) for f in pool_log.filters):
        pool_log.addFilter(_OneLine())
