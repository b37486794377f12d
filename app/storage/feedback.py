"""Feedback on replies: a user's thumbs up or down, with an optional comment, one per reply and
user (`feedback`, migration 15). Routes check that the reply is the caller's before any of
these is called; a conversation's deletion takes its replies' feedback with it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.tables import feedback, messages
from app.storage.writer import Writer

UP, DOWN = 1, -1


class Feedback:
    def __init__(self, *, database: Database, writer: Writer) -> None:
        self._database = database
        self._writer = writer

    async def rate(
        self, *, message_id: str, user_id: str, rating: int, comment: str | None, at: datetime
    ) -> None:
        """The user's rating of the reply, replacing theirs if they had one (its first time
        stays its `created_at`)."""
        upsert = self._writer.insert(feedback).values(
            message_id=message_id,
            user_id=user_id,
            rating=rating,
            comment=comment,
            created_at=at,
            updated_at=at,
        )
        await self._writer.write(
            [
                upsert.on_conflict_do_update(
                    index_elements=[feedback.c.message_id, feedback.c.user_id],
                    set_={"rating": rating, "comment": comment, "updated_at": at},
                )
            ]
        )

    async def remove(self, *, message_id: str, user_id: str) -> None:
        await self._writer.write(
            [
                feedback.delete().where(
                    feedback.c.message_id == message_id, feedback.c.user_id == user_id
                )
            ]
        )

    async def in_conversation(self, *, conversation_id: str, user_id: str) -> list[dict[str, Any]]:
        """The user's feedback on the replies of a conversation, every branch's."""
        rows = await self._database.fetch_all(
            sa.select(feedback.c.message_id, feedback.c.rating, feedback.c.comment)
            .join(messages, messages.c.id == feedback.c.message_id)
            .where(messages.c.conversation_id == conversation_id, feedback.c.user_id == user_id)
        )
        return [dict(row._mapping) for row in rows]
