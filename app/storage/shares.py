"""Shared links: a conversation's branch, read-only, as it was when its owner made the link
(`shares`, migration 15). One live link per conversation: making one revokes the one before."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.tables import shares
from app.storage.writer import Writer


class Shares:
    def __init__(self, *, database: Database, writer: Writer) -> None:
        self._database = database
        self._writer = writer

    async def make(
        self, *, token: str, conversation_id: str, user_id: str, leaf_id: str, at: datetime
    ) -> None:
        await self._writer.write(
            [
                self._revoking(conversation_id, user_id, at),
                shares.insert().values(
                    token=token,
                    conversation_id=conversation_id,
                    user_id=user_id,
                    leaf_id=leaf_id,
                    created_at=at,
                ),
            ]
        )

    async def revoke(self, *, conversation_id: str, user_id: str, at: datetime) -> None:
        await self._writer.write([self._revoking(conversation_id, user_id, at)])

    @staticmethod
    def _revoking(conversation_id: str, user_id: str, at: datetime) -> sa.Update:
        return (
            shares.update()
            .where(
                shares.c.conversation_id == conversation_id,
                shares.c.user_id == user_id,
                shares.c.revoked_at.is_(None),
            )
            .values(revoked_at=at)
        )

    async def live(self, *, token: str) -> dict[str, Any] | None:
        """The link, unless it was revoked (then None, as for a token never made)."""
        row = await self._database.fetch_one(
            sa.select(shares).where(shares.c.token == token, shares.c.revoked_at.is_(None))
        )
        return dict(row._mapping) if row else None
