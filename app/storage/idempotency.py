"""Idempotency keys: a client's name for one turn (`Idempotency-Key`), so a retried POST gets
the reply its first try started instead of a second billed turn.

Insert-first: the key's row is the first step of the turn's own transaction (see
`Replies.start_turn`). Its primary key (user_id, key) lets exactly one of any number of
simultaneous requests through, on SQLite and PostgreSQL alike; the others' transactions fail
whole, turn rows included, and they read the winner's row instead. A key row therefore always
names rows that were written.

Keys are kept `KEPT_FOR` and then deleted by the recovery sweep (`Recovery._beat`); until the
sweep gets to it, an older key still answers as it did.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.tables import idempotency_keys, now
from app.storage.writer import Step, Writer, binds

KEPT_FOR = timedelta(hours=24)
CLAIM_KEY = idempotency_keys.insert().values(
    binds(
        "user_id",
        "key",
        "fingerprint",
        "conversation_id",
        "user_message_id",
        "message_id",
        "created_at",
    )
)


class IdempotencyKeys:
    def __init__(self, *, database: Database, writer: Writer) -> None:
        self._database = database
        self._writer = writer

    @staticmethod
    def claim(
        *,
        user_id: str,
        key: str,
        fingerprint: str,
        conversation_id: str,
        user_message_id: str,
        message_id: str,
    ) -> Step:
        """The step that claims `key` for a turn's ids: it fails (and with it the transaction
        it is in) if the user already used the key."""
        return (
            CLAIM_KEY,
            {
                "user_id": user_id,
                "key": key,
                "fingerprint": fingerprint,
                "conversation_id": conversation_id,
                "user_message_id": user_message_id,
                "message_id": message_id,
                "created_at": now(),
            },
        )

    async def get(self, *, user_id: str, key: str) -> dict[str, Any] | None:
        row = await self._database.fetch_one(
            sa.select(idempotency_keys).where(
                idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key
            )
        )
        return dict(row._mapping) if row else None

    async def expire(self, *, at: datetime) -> None:
        """Delete the keys older than `KEPT_FOR` at `at`."""
        await self._writer.write(
            [idempotency_keys.delete().where(idempotency_keys.c.created_at < at - KEPT_FOR)]
        )
