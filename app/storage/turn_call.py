"""PostgreSQL: a turn's write as one call of `start_turn()` (migration 20), one round trip.

On SQLite a turn's write is its steps in one grouped transaction on the event loop, where a
statement is no round trip (app/storage/sqlite_writer.py). On PostgreSQL each step was one:
BEGIN, the budget's advisory lock, the guarded reservation, the conversation, the two messages
and COMMIT, seven round trips awaited one after another before a gated turn's upstream call,
each waiting for the event loop to come round again (docs/benchmarks.md: the gated write was
82% of what the server added to the first token at 50 streams). The function does the same
statements server-side in the order the steps went, the advisory locks first, so every
statement after them sees the reservations of whoever held them before (READ COMMITTED takes
each statement's snapshot as it starts, in a VOLATILE function too). Alone in its statement it
is its own transaction: `PostgresWriter` sends it without BEGIN and COMMIT.

Its answer rides as a `Guard`: `false` (the turn does not fit a limit, nothing written) leaves
the statement without rows, which the writer raises as `WriteRefused`, as it does for the
conditional INSERT on SQLite. A key used already fails the call (a unique violation) with all
of it undone, as the claim step fails the transaction on SQLite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from app.storage.budgets import Terms
from app.storage.idempotency import Claim
from app.storage.tables import UTCDateTime
from app.storage.writer import Guard

# In the order of the function's parameters (migration 20).
_PARAMETERS: tuple[tuple[str, Any], ...] = (
    ("user_id", sa.String),
    ("agent", sa.String),
    ("stamp", UTCDateTime),
    ("conversation_id", sa.String),
    ("new_conversation", sa.Boolean),
    ("title", sa.String),
    ("subject_conversation_id", sa.String),
    ("model", sa.String),
    ("user_message_id", sa.String),
    ("parent_id", sa.String),
    ("user_content", sa.String),
    ("message_id", sa.String),
    ("temperature", sa.Float),
    ("history", sa.String),
    ("attachments", postgresql.ARRAY(sa.String)),
    ("key", sa.String),
    ("fingerprint", sa.String),
    ("reserve", sa.Boolean),
    ("gated", sa.Boolean),
    ("day", sa.String),
    ("month", sa.String),
    ("amount", sa.BigInteger),
    ("overrides", sa.Boolean),
    ("daily", sa.BigInteger),
    ("monthly", sa.BigInteger),
    ("global", sa.BigInteger),
    ("concurrent", sa.BigInteger),
)

# Built once: the writer runs its compiled plan straight on asyncpg (app/storage/plans.py).
START_TURN = (
    sa.text(
        "SELECT written FROM start_turn("
        + ", ".join(f":{name}" for name, _ in _PARAMETERS)
        + ") AS written WHERE written"
    )
    .bindparams(*(sa.bindparam(name, type_=type_) for name, type_ in _PARAMETERS))
    .columns(written=sa.Boolean)
)


def turn_call(
    *,
    user_id: str,
    agent: str,
    stamp: datetime,
    conversation_id: str,
    new_conversation: bool,
    title: str,
    subject_conversation_id: str | None,
    model: str,
    user_message_id: str,
    parent_id: str | None,
    user_content: str | None,
    message_id: str,
    temperature: float,
    history: str | None,
    attachments: list[str],
    claim: Claim | None,
    reservation: Terms | None,
) -> Guard:
    """The turn's write as one statement: refused (`WriteRefused`) when it does not fit.
    `attachments`: the upload ids the new user message carries, in order."""
    limits = None if reservation is None else reservation.limits
    return Guard(
        (
            START_TURN,
            {
                "user_id": user_id,
                "agent": agent,
                "stamp": stamp,
                "conversation_id": conversation_id,
                "new_conversation": new_conversation,
                "title": title,
                "subject_conversation_id": subject_conversation_id,
                "model": model,
                "user_message_id": user_message_id,
                "parent_id": parent_id,
                "user_content": user_content,
                "message_id": message_id,
                "temperature": temperature,
                "history": history,
                "attachments": attachments,
                "key": None if claim is None else claim.key,
                "fingerprint": None if claim is None else claim.fingerprint,
                "reserve": reservation is not None,
                "gated": limits is not None and limits.gated,
                "day": None if reservation is None else reservation.day,
                "month": None if reservation is None else reservation.month,
                "amount": None if reservation is None else reservation.amount,
                "overrides": reservation is not None and reservation.overrides,
                "daily": None if limits is None else limits.daily,
                "monthly": None if limits is None else limits.monthly,
                "global": None if limits is None else limits.global_daily,
                "concurrent": None if limits is None else limits.concurrent,
            },
        )
    )
