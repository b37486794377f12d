"""Persistence: the tables' current shape and keyword-only async functions. Routes hold no SQL.

Write pattern, chosen so no token ever waits for the database:
- a turn starts with one transaction: the user message and a `streaming` assistant row;
- while a reply streams, its content is checkpointed every few seconds (not per token);
- it ends with one transaction: the final message row and all its generation (cost) rows.
Costs live only in `generations` (integer pico-dollars); message and conversation totals are
sums over it, so a cost can never be counted twice.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects import postgresql, sqlite

from app.billing.money import to_picos
from app.storage.database import sqlite_path
from app.storage.sqlite_writer import Outcome, SQLiteWriter, Step


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


# The statements of the writes every reply makes are built once, with bind parameters, and
# executed with a dict of values: SQLAlchemy then finds each one's compiled form in its cache
# at once, where building a statement with `.values(...)` per call cost about five times its
# execution (bench/, SQLite: 75-105 us against 13-19 us a statement).
def _binds(*names: str) -> dict[str, sa.BindParameter[Any]]:
    return {name: sa.bindparam(name) for name in names}


NEW_CONVERSATION = conversations.insert().values(
    _binds("id", "user_id", "agent", "title", "subject_conversation_id", "created_at", "updated_at")
)
TOUCH_CONVERSATION = (
    conversations.update()
    .where(conversations.c.id == sa.bindparam("conversation_id"))
    .values(_binds("updated_at"))
)
# A message takes the next `seq` of its conversation, computed by the insert itself.
NEW_MESSAGE = messages.insert().values(
    seq=sa.select(sa.func.coalesce(sa.func.max(messages.c.seq), 0) + 1)
    # Not the `conversation_id` of the values: one parameter in two places gets two types
    # deduced on PostgreSQL, which asyncpg refuses.
    .where(messages.c.conversation_id == sa.bindparam("seq_of"))
    .scalar_subquery(),
    **_binds(
        "id",
        "conversation_id",
        "role",
        "content",
        "status",
        "agent",
        "requested_model",
        "temperature",
        "event_lengths",
        "created_at",
        "updated_at",
    ),
)
CHECKPOINT_MESSAGE = (
    messages.update()
    .where(messages.c.id == sa.bindparam("message_id"), messages.c.status == "streaming")
    .values(_binds("content", "event_lengths", "updated_at"))
)
FINISH_MESSAGE = (
    messages.update()
    .where(messages.c.id == sa.bindparam("message_id"))
    .values(
        _binds(
            "status",
            "content",
            "event_lengths",
            "model",
            "finish_reason",
            "error_code",
            "error_message",
            "updated_at",
        )
    )
)
# What a generation row's later writes may change; the rest is set when it is first saved.
GENERATION_PROGRESS = (
    "generation_id",
    "model",
    "status",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cost_picousd",
    "cost_source",
    "first_token_at",
    "ended_at",
)


def _upsert_generation_statement(insert: Any) -> sa.Executable:
    statement = insert(generations).values(_binds(*(column.name for column in generations.c)))
    return statement.on_conflict_do_update(
        index_elements=[generations.c.id],
        set_={name: statement.excluded[name] for name in GENERATION_PROGRESS},
    )


def _with_values(statement: sa.Executable, values: dict[str, Any]) -> sa.Executable:
    """A copy of `statement` with its bind parameters set (for `databases`, which takes no
    separate values for a statement)."""

    def set_value(bind: sa.BindParameter[Any]) -> None:
        if bind.key in values:
            bind.value, bind.required = values[bind.key], False

    return sa.sql.visitors.cloned_traverse(statement, {}, {"bindparam": set_value})


@dataclass(frozen=True)
class TurnIds:
    """The ids of a turn's rows, chosen before they are written: the reply streams meanwhile."""

    conversation_id: str
    user_message_id: str
    message_id: str  # the assistant's reply
    new_conversation: bool

    @classmethod
    def allocate(cls, conversation_id: str | None) -> TurnIds:
        """Ids for a turn in `conversation_id`, or in a new conversation when it is None."""
        return cls(conversation_id or new_id(), new_id(), new_id(), conversation_id is None)


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


class Store:
    def __init__(self, database: Database, *, sqlite_db: bool, busy_timeout: float = 30.0) -> None:
        self.database = database
        self._insert = sqlite.insert if sqlite_db else postgresql.insert
        self._upsert_generation = _upsert_generation_statement(self._insert)
        # SQLite allows one writer: ours go through one thread and one connection, grouped into
        # as few transactions as they can be (see `sqlite_writer`). PostgreSQL writes use the
        # pool, a transaction each.
        self._writer = (
            SQLiteWriter(sqlite_path(str(database.url)), busy_timeout=busy_timeout)
            if sqlite_db
            else None
        )

    async def _write(self, *steps: Step) -> Outcome:
        """Apply `steps` in one transaction; the rows of each one's RETURNING clause."""
        if self._writer is not None:
            return await self._writer.write(steps)
        outcome: Outcome = []
        async with self.database.transaction():
            for step in steps:
                statement = _with_values(*step) if isinstance(step, tuple) else step
                if statement.exported_columns:
                    outcome.append(await self.database.fetch_all(statement))
                else:
                    await self.database.execute(statement)
                    outcome.append([])
        return outcome

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()

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
        owned = sa.and_(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
        _, deleted = await self._write(
            messages.delete().where(
                messages.c.conversation_id.in_(sa.select(conversations.c.id).where(owned))
            ),
            conversations.delete().where(owned).returning(conversations.c.id),
        )
        return bool(deleted)

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
        ids: TurnIds,
        user_id: str,
        agent: str,
        title: str,
        user_content: str,
        requested_model: str,
        temperature: float,
        subject_conversation_id: str | None = None,
    ) -> None:
        """Save the user message and a `streaming` assistant row (and a new conversation's
        row) in one transaction."""
        stamp = now()
        conversation_id = ids.conversation_id
        if ids.new_conversation:
            opening: Step = (
                NEW_CONVERSATION,
                {
                    "id": conversation_id,
                    "user_id": user_id,
                    "agent": agent,
                    "title": title,
                    "subject_conversation_id": subject_conversation_id,
                    "created_at": stamp,
                    "updated_at": stamp,
                },
            )
        else:
            opening = (
                TOUCH_CONVERSATION,
                {"conversation_id": conversation_id, "updated_at": stamp},
            )
        common = {
            "conversation_id": conversation_id,
            "seq_of": conversation_id,
            "agent": agent,
            "created_at": stamp,
            "updated_at": stamp,
        }
        await self._write(
            opening,
            (
                NEW_MESSAGE,
                {
                    **common,
                    "id": ids.user_message_id,
                    "role": "user",
                    "content": user_content,
                    "status": "complete",
                    "requested_model": None,
                    "temperature": None,
                    "event_lengths": None,
                },
            ),
            (
                NEW_MESSAGE,
                {
                    **common,
                    "id": ids.message_id,
                    "role": "assistant",
                    "content": "",
                    "status": "streaming",
                    "requested_model": requested_model,
                    "temperature": temperature,
                    "event_lengths": "[]",
                },
            ),
        )

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
        await self._write(
            (
                CHECKPOINT_MESSAGE,
                {
                    "message_id": message_id,
                    "content": content,
                    "event_lengths": json.dumps(event_lengths),
                    "updated_at": now(),
                },
            ),
            *self._generation_steps(
                records, message_id=message_id, conversation_id=conversation_id, agent=agent
            ),
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
        await self._write(
            (
                FINISH_MESSAGE,
                {
                    "message_id": message_id,
                    "status": status,
                    "content": content,
                    "event_lengths": json.dumps(event_lengths),
                    "model": model,
                    "finish_reason": finish_reason,
                    "error_code": error_code,
                    "error_message": error_message,
                    "updated_at": stamp,
                },
            ),
            (TOUCH_CONVERSATION, {"conversation_id": conversation_id, "updated_at": stamp}),
            *self._generation_steps(
                records, message_id=message_id, conversation_id=conversation_id, agent=agent
            ),
        )

    def _generation_steps(
        self,
        records: list[GenerationRecord],
        *,
        message_id: str,
        conversation_id: str,
        agent: str,
    ) -> list[Step]:
        return [
            (
                self._upsert_generation,
                {
                    "id": record.id,
                    "message_id": message_id,
                    "conversation_id": conversation_id,
                    "agent": agent,
                    "attempt": record.attempt,
                    "requested_model": record.requested_model,
                    "started_at": record.started_at,
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
                },
            )
            for record in records
        ]

    # -- recovery and cost reconciliation --------------------------------------------------------

    async def touch_replies(self, *, message_ids: list[str]) -> None:
        """The heartbeat of live replies: a reply no process touches is an orphan."""
        await self._write(
            messages.update()
            .where(messages.c.id.in_(message_ids), messages.c.status == "streaming")
            .values(updated_at=now())
        )

    async def interrupt_orphans(self, *, idle_since: datetime) -> list[str]:
        """Mark replies left `streaming` by a dead process as interrupted; return their ids.

        A reply is an orphan when no process has touched it since `idle_since`: live runs
        heartbeat, so the replies other processes (other dynos) are streaming are left alone.
        """
        stamp = now()
        orphaned = sa.and_(messages.c.status == "streaming", messages.c.updated_at < idle_since)
        _, interrupted = await self._write(
            generations.update()
            .where(
                generations.c.message_id.in_(sa.select(messages.c.id).where(orphaned)),
                generations.c.status == "streaming",
            )
            .values(status="cancelled", ended_at=stamp),
            messages.update()
            .where(orphaned)
            .values(
                status="interrupted",
                error_code="interrupted",
                error_message="the server stopped before the reply finished",
                updated_at=stamp,
            )
            .returning(messages.c.id),
        )
        ids = [row[0] for row in interrupted]
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
        await self._write(
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
        await self._write(
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
        await self._write(
            self._insert(agent_overrides)
            .values(agent=agent, **values)
            .on_conflict_do_update(index_elements=[agent_overrides.c.agent], set_=values)
        )
        return stamp

    async def delete_agent_override(self, *, agent: str) -> bool:
        (deleted,) = await self._write(
            agent_overrides.delete()
            .where(agent_overrides.c.agent == agent)
            .returning(agent_overrides.c.agent)
        )
        return bool(deleted)
