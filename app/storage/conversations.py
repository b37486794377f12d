"""Conversations: a user's threads of messages, listed with their message counts and costs.

A conversation's row is written by the turn that opens it and touched by every turn and reply
that ends in it (`app/storage/replies.py` composes the statements below into its writes).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.ledger import cost_by_conversation
from app.storage.tables import conversations, messages
from app.storage.writer import Writer, binds

NEW_CONVERSATION = conversations.insert().values(
    binds("id", "user_id", "agent", "title", "subject_conversation_id", "created_at", "updated_at")
)
TOUCH_CONVERSATION = (
    conversations.update()
    .where(conversations.c.id == sa.bindparam("conversation_id"))
    .values(binds("updated_at"))
)


class Conversations:
    def __init__(self, *, database: Database, writer: Writer) -> None:
        self._database = database
        self._writer = writer

    async def get(self, *, conversation_id: str, user_id: str | None) -> dict[str, Any] | None:
        """The conversation, if it is this user's (another's answers as one that is not there);
        `user_id=None` is an admin reading anyone's, and must be said so explicitly."""
        query = conversations.select().where(conversations.c.id == conversation_id)
        if user_id is not None:
            query = query.where(conversations.c.user_id == user_id)
        row = await self._database.fetch_one(query)
        return dict(row._mapping) if row else None

    async def list_for_user(
        self, *, user_id: str, agent: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The user's conversations, latest first, each with its message count and cost."""
        counts = (
            sa.select(messages.c.conversation_id, sa.func.count().label("message_count"))
            .group_by(messages.c.conversation_id)
            .subquery()
        )
        costs = cost_by_conversation()
        query = (
            sa.select(
                conversations,
                sa.func.coalesce(counts.c.message_count, 0).label("message_count"),
                costs.c.cost_picousd,
            )
            .select_from(
                conversations.outerjoin(
                    counts, counts.c.conversation_id == conversations.c.id
                ).outerjoin(costs, costs.c.conversation_id == conversations.c.id)
            )
            .where(conversations.c.user_id == user_id)
            .order_by(conversations.c.updated_at.desc(), conversations.c.id.desc())
            .limit(limit)
        )
        if agent:
            query = query.where(conversations.c.agent == agent)
        return [dict(row._mapping) for row in await self._database.fetch_all(query)]

    async def delete(self, *, conversation_id: str, user_id: str) -> bool:
        """Delete the user's conversation and its messages; its generations stay in the ledger
        (what was spent stays spent). False if there was no such conversation of theirs."""
        owned = sa.and_(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
        _, deleted = await self._writer.write(
            [
                messages.delete().where(
                    messages.c.conversation_id.in_(sa.select(conversations.c.id).where(owned))
                ),
                conversations.delete().where(owned).returning(conversations.c.id),
            ]
        )
        return bool(deleted)
