"""Conversations: a user's threads of messages, listed with their message counts and costs.

A listing is read a page at a time, newest first, by keyset over `(updated_at, id)`: a page
starts after the last row of the one before (`Position`), so a conversation created while a
client pages never shifts the older ones into a duplicate or a skip (an OFFSET would). A
conversation a new turn touches moves to the front: a client that has paged past it sees it
again only from the first page.

A conversation's row is written by the turn that opens it and touched by every turn and reply
that ends in it (`app/storage/replies.py` composes the statements below into its writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.ledger import conversation_cost
from app.storage.tables import conversations, feedback, messages, shares
from app.storage.uploads import conversation_upload_steps
from app.storage.writer import Step, Writer, binds

NEW_CONVERSATION = conversations.insert().values(
    binds(
        "id",
        "user_id",
        "agent",
        "title",
        "subject_conversation_id",
        "created_at",
        "updated_at",
        "active_leaf_id",
        "model",
    )
)
TOUCH_CONVERSATION = (
    conversations.update()
    .where(conversations.c.id == sa.bindparam("conversation_id"))
    .values(binds("updated_at"))
)
# A turn in a conversation: it moves to the front, shows the branch the turn ends, and keeps
# the turn's model for the next one.
TURN_IN_CONVERSATION = (
    conversations.update()
    .where(conversations.c.id == sa.bindparam("conversation_id"))
    .values(binds("updated_at", "active_leaf_id", "model"))
)


@dataclass(frozen=True)
class Position:
    """Where a page of a listing ends: its last conversation's `updated_at` and `id`."""

    updated_at: datetime
    id: str


def conversations_page(
    *, user_id: str, limit: int, agent: str | None = None, after: Position | None = None
) -> sa.Select[Any]:
    """A page of the user's conversations, latest first, with message counts and costs.

    The page is chosen first, in a subquery of its own, from `ix_conversations_user_updated_id`
    (read backwards, no sort), and only its rows get the counts and sums, each one a correlated
    subquery on that conversation's own index range. Joining grouped counts of all `messages`
    and costs of all `generations` to the page instead took 221 ms p50 on SQLite (1,355 ms on
    PostgreSQL) with 50k conversations, 1M messages and 500k generations, whatever the page
    size; now 4-5 ms on either, a first page or one 25,000 conversations in (timed by hand;
    `python -m bench.growth` measures the list on 1,000,000 messages). With `agent`, the
    rows of the user's other agents in between are read and skipped (no index per agent: one
    more to update on every turn, for a filter only the page's sidebar uses).
    """
    page = (
        sa.select(conversations)
        .where(conversations.c.user_id == user_id)
        .order_by(conversations.c.updated_at.desc(), conversations.c.id.desc())
        .limit(limit)
    )
    if agent is not None:
        page = page.where(conversations.c.agent == agent)
    if after is not None:
        # `updated_at <= t` bounds the index range on both databases; the OR only breaks ties.
        page = page.where(
            conversations.c.updated_at <= after.updated_at,
            sa.or_(conversations.c.updated_at < after.updated_at, conversations.c.id < after.id),
        )
    chosen = page.subquery("page")
    message_count = (
        sa.select(sa.func.count())
        .where(messages.c.conversation_id == chosen.c.id)
        .scalar_subquery()
    )
    return sa.select(
        chosen,
        message_count.label("message_count"),
        conversation_cost(chosen.c.id).label("cost_picousd"),
    ).order_by(chosen.c.updated_at.desc(), chosen.c.id.desc())


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

    async def total_cost(self, *, conversation_id: str) -> int | None:
        """What the conversation cost, in pico-dollars (see `ledger.conversation_cost`); None
        while no cost of it is known."""
        return await self._database.fetch_val(
            sa.select(conversation_cost(sa.literal(conversation_id, sa.String)))
        )

    async def cache_saved(self, *, conversation_id: str) -> int | None:
        """What prompt caching saved on the conversation, in pico-dollars, over the same
        generations as `total_cost`; None while no saving of it is known."""
        return await self._database.fetch_val(
            sa.select(
                conversation_cost(
                    sa.literal(conversation_id, sa.String), measure="cache_saved_picousd"
                )
            )
        )

    async def rename(self, *, conversation_id: str, user_id: str, title: str) -> bool:
        """Give the user's conversation a title; False if there is no such conversation."""
        [renamed] = await self._writer.write(
            [
                conversations.update()
                .where(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
                .values(title=title, titled=True)
                .returning(conversations.c.id)
            ]
        )
        return bool(renamed)

    async def save_title(
        self, *, conversation_id: str, new: str | None, generation: list[Step]
    ) -> None:
        """The titler's outcome, in one transaction: its generation's row (`generation`, the
        ledger's steps) and its title `new`, unless that is None (it failed: the next complete
        reply asks again) or the title is settled already (the user renamed it meanwhile, or
        another reply's title came first: that one stays)."""
        steps = list(generation)
        if new is not None:
            steps.append(
                conversations.update()
                .where(conversations.c.id == conversation_id, conversations.c.titled.is_(False))
                .values(title=new, titled=True)
            )
        await self._writer.write(steps)

    async def list_for_user(
        self, *, user_id: str, limit: int, agent: str | None = None, after: Position | None = None
    ) -> list[dict[str, Any]]:
        """Up to `limit` of the user's conversations, latest first (after `after`), each with
        its message count and cost."""
        query = conversations_page(user_id=user_id, limit=limit, agent=agent, after=after)
        return [dict(row._mapping) for row in await self._database.fetch_all(query)]

    async def delete(self, *, conversation_id: str, user_id: str) -> bool:
        """Delete the user's conversation and its messages, and the uploads they carry (those
        no other conversation's message carries); its generations stay in the ledger (what was
        spent stays spent). False if there was no such conversation of theirs."""
        owned = sa.and_(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
        *_, deleted = await self._writer.write(
            [
                *conversation_upload_steps(sa.select(conversations.c.id).where(owned), messages),
                shares.delete().where(
                    shares.c.conversation_id.in_(sa.select(conversations.c.id).where(owned))
                ),
                feedback.delete().where(
                    feedback.c.message_id.in_(
                        sa.select(messages.c.id).where(
                            messages.c.conversation_id.in_(
                                sa.select(conversations.c.id).where(owned)
                            )
                        )
                    )
                ),
                messages.delete().where(
                    messages.c.conversation_id.in_(sa.select(conversations.c.id).where(owned))
                ),
                conversations.delete().where(owned).returning(conversations.c.id),
            ]
        )
        return bool(deleted)
