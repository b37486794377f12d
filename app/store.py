"""Persistence: the tables' current shape and keyword-only async functions. Routes hold no SQL.

Write pattern, chosen so no token ever waits for the database:
- a turn starts with one transaction: the user message and a `streaming` assistant row;
- while a reply streams, its content is checkpointed every few seconds (not per token);
- it ends with one transaction: the final message row and all its generation (cost) rows.
Costs live only in `generations` (integer pico-dollars); message and conversation totals are
sums over it, so a cost can never be counted twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import sqlalchemy as sa
from databases import Database
from databases.core import Connection
from sqlalchemy.dialects import postgresql, sqlite

PICOS = Decimal(10**12)


class UTCDateTime(sa.TypeDecorator):
    """Timestamps go in as UTC and come out timezone-aware, on SQLite as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("agent", sa.String(32), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("subject_conversation_id", sa.String(36)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("conversation_id", sa.String(36), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("agent", sa.String(32), nullable=False),
    sa.Column("requested_model", sa.String(200)),
    sa.Column("model", sa.String(200)),
    sa.Column("temperature", sa.Float),
    sa.Column("finish_reason", sa.String(32)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    # JSON list: the length of each delta event's content, so a reply replays from the database
    # with the same event ids it streamed with (resumption after a restart).
    sa.Column("event_lengths", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

generations = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("generation_id", sa.String(200)),
    sa.Column("message_id", sa.String(36), nullable=False),
    sa.Column("conversation_id", sa.String(36), nullable=False),
    sa.Column("agent", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("requested_model", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("reasoning_tokens", sa.Integer, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False),
    sa.Column("cost_picousd", sa.BigInteger),
    sa.Column("cost_source", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("first_token_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
)

model_catalog = sa.Table(
    "model_catalog",
    metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("fetched_at", UTCDateTime, nullable=False),
)

agent_overrides = sa.Table(
    "agent_overrides",
    metadata,
    sa.Column("agent", sa.String(32), primary_key=True),
    sa.Column("model", sa.String(200)),
    sa.Column("fallback_models", sa.Text),
    sa.Column("temperature", sa.Float),
    sa.Column("max_tokens", sa.Integer),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def to_picos(cost: Decimal | None) -> int | None:
    if cost is None:
        return None
    return int((cost * PICOS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def from_picos(picos: int | None) -> Decimal | None:
    return None if picos is None else Decimal(int(picos)) / PICOS


@dataclass
class GenerationRecord:
    """One upstream request of a reply; `id` is ours, `generation_id` OpenRouter's."""

    id: str
    attempt: int
    requested_model: str
    started_at: datetime
    generation_id: str | None = None
    model: str | None = None
    status: str = "streaming"  # streaming | complete | error | cancelled
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal | None = None
    # usage (the stream's usage chunk) | generation (GET /generation) | none (unknown)
    # | pending (not known yet) | not_billed (failed before a generation existed)
    cost_source: str = "pending"
    first_token_at: datetime | None = None
    ended_at: datetime | None = None


class WriteLock:
    """A mutex whose urgent holders go before the ordinary ones waiting."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._held = False
        self._urgent_waiting = 0

    @asynccontextmanager
    async def hold(self, *, urgent: bool) -> AsyncIterator[None]:
        async with self._condition:
            self._urgent_waiting += urgent
            try:
                await self._condition.wait_for(
                    lambda: not self._held and (urgent or not self._urgent_waiting)
                )
            finally:
                self._urgent_waiting -= urgent
            self._held = True
        try:
            yield
        finally:
            async with self._condition:
                self._held = False
                self._condition.notify_all()


class Store:
    def __init__(self, database: Database, *, sqlite_db: bool) -> None:
        self.database = database
        self._insert = sqlite.insert if sqlite_db else postgresql.insert
        # SQLite allows one writer: ours queue in-process on one long-lived connection, rather
        # than open a connection (a thread, with `databases`' aiosqlite backend) per write and
        # spin on the busy timeout. PostgreSQL writes use the pool.
        self._sqlite = sqlite_db
        self._write_lock = WriteLock()
        self._writer: Connection | None = None

    @asynccontextmanager
    async def _write(self, *, urgent: bool = False) -> AsyncIterator[Database | Connection]:
        """A transaction to write in; yields what to execute statements on.

        `urgent` writes (a turn's start, on the path to the first token) go before the others
        waiting for SQLite's one writer (replies ending, checkpoints).
        """
        if not self._sqlite:
            async with self.database.transaction():
                yield self.database
            return
        async with self._write_lock.hold(urgent=urgent):
            if self._writer is None:
                # Not `database.connection()`: that one belongs to the current task.
                self._writer = Connection(self.database, self.database._backend)
                await self._writer.__aenter__()
            async with self._writer.transaction():
                yield self._writer

    async def close(self) -> None:
        async with self._write_lock.hold(urgent=False):
            if self._writer is not None:
                await self._writer.__aexit__(None, None, None)
                self._writer = None

    # -- conversations ------------------------------------------------------------------------

    async def get_conversation(
        self, *, conversation_id: str, user_id: str
    ) -> dict[str, Any] | None:
        row = await self.database.fetch_one(
            conversations.select().where(
                conversations.c.id == conversation_id, conversations.c.user_id == user_id
            )
        )
        return dict(row._mapping) if row else None

    async def list_conversations(
        self, *, user_id: str, agent: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        counts = (
            sa.select(messages.c.conversation_id, sa.func.count().label("message_count"))
            .group_by(messages.c.conversation_id)
            .subquery()
        )
        costs = (
            sa.select(
                generations.c.conversation_id,
                sa.func.sum(generations.c.cost_picousd).label("cost_picousd"),
            )
            .group_by(generations.c.conversation_id)
            .subquery()
        )
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
        return [dict(row._mapping) for row in await self.database.fetch_all(query)]

    async def delete_conversation(self, *, conversation_id: str, user_id: str) -> bool:
        async with self._write() as db:
            found = await db.fetch_val(
                sa.select(conversations.c.id).where(
                    conversations.c.id == conversation_id, conversations.c.user_id == user_id
                )
            )
            if not found:
                return False
            await db.execute(messages.delete().where(messages.c.conversation_id == conversation_id))
            await db.execute(conversations.delete().where(conversations.c.id == conversation_id))
        return True

    # -- messages ------------------------------------------------------------------------------

    async def conversation_messages(self, *, conversation_id: str) -> list[dict[str, Any]]:
        """Messages in order, each with its usage and cost summed over its generations."""
        usage = (
            sa.select(
                generations.c.message_id,
                sa.func.sum(generations.c.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(generations.c.completion_tokens).label("completion_tokens"),
                sa.func.sum(generations.c.cost_picousd).label("cost_picousd"),
                sa.func.count().label("generation_count"),
            )
            .group_by(generations.c.message_id)
            .subquery()
        )
        query = (
            sa.select(
                messages,
                usage.c.prompt_tokens,
                usage.c.completion_tokens,
                usage.c.cost_picousd,
                usage.c.generation_count,
            )
            .select_from(messages.outerjoin(usage, usage.c.message_id == messages.c.id))
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.seq)
        )
        return [dict(row._mapping) for row in await self.database.fetch_all(query)]

    async def history(self, *, conversation_id: str, limit: int) -> list[dict[str, str]]:
        """The last `limit` messages with content, oldest first, in OpenRouter's message shape."""
        if limit <= 0:
            return []
        rows = await self.database.fetch_all(
            sa.select(messages.c.role, messages.c.content)
            .where(messages.c.conversation_id == conversation_id, messages.c.content != "")
            .order_by(messages.c.seq.desc())
            .limit(limit)
        )
        return [{"role": row[0], "content": row[1]} for row in reversed(rows)]

    async def reply(self, *, message_id: str) -> dict[str, Any] | None:
        """An assistant message with its user message's id and its generations' sums."""
        user_message = messages.alias("user_message")
        query = (
            sa.select(
                messages,
                user_message.c.id.label("user_message_id"),
                sa.select(sa.func.sum(generations.c.prompt_tokens))
                .where(generations.c.message_id == message_id)
                .scalar_subquery()
                .label("prompt_tokens"),
                sa.select(sa.func.sum(generations.c.completion_tokens))
                .where(generations.c.message_id == message_id)
                .scalar_subquery()
                .label("completion_tokens"),
                sa.select(sa.func.sum(generations.c.cost_picousd))
                .where(generations.c.message_id == message_id)
                .scalar_subquery()
                .label("cost_picousd"),
            )
            .select_from(
                messages.outerjoin(
                    user_message,
                    sa.and_(
                        user_message.c.conversation_id == messages.c.conversation_id,
                        user_message.c.seq == messages.c.seq - 1,
                    ),
                )
            )
            .where(messages.c.id == message_id, messages.c.role == "assistant")
        )
        row = await self.database.fetch_one(query)
        return dict(row._mapping) if row else None

    async def start_turn(
        self,
        *,
        user_id: str,
        agent: str,
        conversation_id: str | None,
        title: str,
        user_content: str,
        requested_model: str,
        temperature: float,
        subject_conversation_id: str | None = None,
    ) -> tuple[str, str, str]:
        """Save the user message and a `streaming` assistant row in one transaction.

        Returns (conversation_id, user_message_id, assistant_message_id). A conversation_id of
        None starts a new conversation.
        """
        stamp = now()
        user_message_id, assistant_id = new_id(), new_id()
        async with self._write(urgent=True) as db:
            if conversation_id is None:
                conversation_id = new_id()
                await db.execute(
                    conversations.insert().values(
                        id=conversation_id,
                        user_id=user_id,
                        agent=agent,
                        title=title,
                        subject_conversation_id=subject_conversation_id,
                        created_at=stamp,
                        updated_at=stamp,
                    )
                )
                seq = 0
            else:
                seq = await db.fetch_val(
                    sa.select(sa.func.coalesce(sa.func.max(messages.c.seq), -1)).where(
                        messages.c.conversation_id == conversation_id
                    )
                )
                await db.execute(
                    conversations.update()
                    .where(conversations.c.id == conversation_id)
                    .values(updated_at=stamp)
                )
            common = {
                "conversation_id": conversation_id,
                "agent": agent,
                "created_at": stamp,
                "updated_at": stamp,
            }
            await db.execute(
                messages.insert().values(
                    id=user_message_id,
                    seq=seq + 1,
                    role="user",
                    content=user_content,
                    status="complete",
                    **common,
                )
            )
            await db.execute(
                messages.insert().values(
                    id=assistant_id,
                    seq=seq + 2,
                    role="assistant",
                    content="",
                    status="streaming",
                    requested_model=requested_model,
                    temperature=temperature,
                    event_lengths="[]",
                    **common,
                )
            )
        return conversation_id, user_message_id, assistant_id

    async def checkpoint(
        self,
        *,
        message_id: str,
        conversation_id: str,
        agent: str,
        content: str,
        event_lengths: list[int],
        records: list[GenerationRecord],
    ) -> None:
        """A streaming reply's progress so far, with its generation rows."""
        async with self._write() as db:
            await db.execute(
                messages.update()
                .where(messages.c.id == message_id, messages.c.status == "streaming")
                .values(content=content, event_lengths=json.dumps(event_lengths), updated_at=now())
            )
            for record in records:
                await self._upsert_generation(
                    db, record, message_id=message_id, conversation_id=conversation_id, agent=agent
                )

    async def finish_reply(
        self,
        *,
        message_id: str,
        conversation_id: str,
        agent: str,
        status: str,
        content: str,
        event_lengths: list[int],
        model: str | None,
        finish_reason: str | None,
        error_code: str | None,
        error_message: str | None,
        records: list[GenerationRecord],
    ) -> None:
        """The reply's final state and all its generation rows, in one transaction."""
        stamp = now()
        async with self._write() as db:
            await db.execute(
                messages.update()
                .where(messages.c.id == message_id)
                .values(
                    status=status,
                    content=content,
                    event_lengths=json.dumps(event_lengths),
                    model=model,
                    finish_reason=finish_reason,
                    error_code=error_code,
                    error_message=error_message,
                    updated_at=stamp,
                )
            )
            await db.execute(
                conversations.update()
                .where(conversations.c.id == conversation_id)
                .values(updated_at=stamp)
            )
            for record in records:
                await self._upsert_generation(
                    db, record, message_id=message_id, conversation_id=conversation_id, agent=agent
                )

    async def _upsert_generation(
        self,
        db: Database | Connection,
        record: GenerationRecord,
        *,
        message_id: str,
        conversation_id: str,
        agent: str,
    ) -> None:
        values = {
            "generation_id": record.generation_id,
            "model": record.model,
            "status": record.status,
            "error_code": record.error_code,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "reasoning_tokens": record.reasoning_tokens,
            "cached_tokens": record.cached_tokens,
            "cost_picousd": to_picos(record.cost),
            "cost_source": record.cost_source,
            "first_token_at": record.first_token_at,
            "ended_at": record.ended_at,
        }
        statement = self._insert(generations).values(
            id=record.id,
            message_id=message_id,
            conversation_id=conversation_id,
            agent=agent,
            attempt=record.attempt,
            requested_model=record.requested_model,
            started_at=record.started_at,
            **values,
        )
        await db.execute(
            statement.on_conflict_do_update(index_elements=[generations.c.id], set_=values)
        )

    # -- recovery and cost reconciliation --------------------------------------------------------

    async def touch_replies(self, *, message_ids: list[str]) -> None:
        """The heartbeat of live replies: a reply no process touches is an orphan."""
        async with self._write() as db:
            await db.execute(
                messages.update()
                .where(messages.c.id.in_(message_ids), messages.c.status == "streaming")
                .values(updated_at=now())
            )

    async def interrupt_orphans(self, *, idle_since: datetime) -> list[str]:
        """Mark replies left `streaming` by a dead process as interrupted; return their ids.

        A reply is an orphan when no process has touched it since `idle_since`: live runs
        heartbeat, so the replies other processes (other dynos) are streaming are left alone.
        """
        async with self._write() as db:
            rows = await db.fetch_all(
                sa.select(messages.c.id).where(
                    messages.c.status == "streaming", messages.c.updated_at < idle_since
                )
            )
            ids = [row[0] for row in rows]
            if ids:
                await db.execute(
                    messages.update()
                    .where(messages.c.id.in_(ids))
                    .values(
                        status="interrupted",
                        error_code="interrupted",
                        error_message="the server stopped before the reply finished",
                        updated_at=now(),
                    )
                )
                await db.execute(
                    generations.update()
                    .where(generations.c.message_id.in_(ids), generations.c.status == "streaming")
                    .values(status="cancelled", ended_at=now())
                )
        return ids

    async def pending_generations(
        self, *, message_ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Generations whose cost is still unknown (of these messages, or of any ended one)."""
        query = generations.select().where(
            generations.c.cost_source == "pending", generations.c.status != "streaming"
        )
        if message_ids is not None:
            query = query.where(generations.c.message_id.in_(message_ids))
        return [dict(row._mapping) for row in await self.database.fetch_all(query)]

    async def settle_cost(
        self,
        *,
        record_id: str,
        cost: Decimal | None,
        source: str,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        model: str | None = None,
    ) -> None:
        """Set a pending generation's cost once; a settled one is never overwritten."""
        values: dict[str, Any] = {"cost_picousd": to_picos(cost), "cost_source": source}
        if prompt_tokens is not None:
            values["prompt_tokens"] = prompt_tokens
        if completion_tokens is not None:
            values["completion_tokens"] = completion_tokens
        if model is not None:
            values["model"] = model
        async with self._write() as db:
            await db.execute(
                generations.update()
                .where(generations.c.id == record_id, generations.c.cost_source == "pending")
                .values(**values)
            )

    # -- the model catalog's last good copy and agent overrides ---------------------------------

    async def load_model_catalog(self, *, source: str) -> tuple[list[Any], datetime] | None:
        row = await self.database.fetch_one(
            sa.select(model_catalog.c.payload, model_catalog.c.fetched_at).where(
                model_catalog.c.source == source
            )
        )
        return (json.loads(row[0]), row[1]) if row else None

    async def save_model_catalog(
        self, *, source: str, models: list[Any], fetched_at: datetime
    ) -> None:
        values = {"payload": json.dumps(models), "fetched_at": fetched_at}
        async with self._write() as db:
            await db.execute(
                self._insert(model_catalog)
                .values(source=source, **values)
                .on_conflict_do_update(index_elements=[model_catalog.c.source], set_=values)
            )

    async def agent_overrides(self) -> list[dict[str, Any]]:
        rows = await self.database.fetch_all(agent_overrides.select())
        return [
            {
                **row._mapping,
                "fallback_models": None
                if row.fallback_models is None
                else json.loads(row.fallback_models),
            }
            for row in rows
        ]

    async def save_agent_override(
        self,
        *,
        agent: str,
        model: str | None,
        fallback_models: list[str] | None,
        temperature: float | None,
        max_tokens: int | None,
    ) -> datetime:
        """Replace the agent's override (None fields follow the agents file); return its time."""
        stamp = now()
        values = {
            "model": model,
            "fallback_models": None if fallback_models is None else json.dumps(fallback_models),
            "temperature": temperature,
            "max_tokens": max_tokens,
            "updated_at": stamp,
        }
        async with self._write() as db:
            await db.execute(
                self._insert(agent_overrides)
                .values(agent=agent, **values)
                .on_conflict_do_update(index_elements=[agent_overrides.c.agent], set_=values)
            )
        return stamp

    async def delete_agent_override(self, *, agent: str) -> bool:
        async with self._write() as db:
            found = await db.fetch_val(
                sa.select(agent_overrides.c.agent).where(agent_overrides.c.agent == agent)
            )
            if found:
                await db.execute(agent_overrides.delete().where(agent_overrides.c.agent == agent))
        return found is not None
