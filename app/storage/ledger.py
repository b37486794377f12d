"""The ledger: every upstream generation and its cost, the one place costs are kept.

A cost lives only in a `generations` row (integer pico-dollars, with where it came from); a
message's or a conversation's cost is a sum over those rows, so a cost can never be counted
twice. Queries that need such sums (cost reports, spend control, the conversation pages) take
them from the subqueries here rather than summing `generations` themselves.

A reply's generation rows are written in the same transactions as its message (see
`app/storage/replies.py`), from the steps `Ledger.generation_steps` builds. Each row carries
its user (`user_id`, migration 11), not only its conversation: a conversation can be deleted,
what its user spent cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from databases import Database
from sqlalchemy.sql.dml import Insert

from app.core.money import to_picos
from app.core.states import CostSource, GenerationStatus
from app.storage.tables import conversations, generations
from app.storage.writer import Step, Writer, binds


@dataclass
class GenerationRecord:
    """One upstream request of a reply; `id` is ours, `generation_id` OpenRouter's."""

    id: str
    attempt: int
    requested_model: str
    started_at: datetime
    generation_id: str | None = None
    model: str | None = None
    status: GenerationStatus = GenerationStatus.STREAMING
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    is_byok: bool = False
    cost: Decimal | None = None
    upstream_cost: Decimal | None = None  # a BYOK generation's provider charge; not billed
    cost_source: CostSource = CostSource.PENDING
    # What prompt caching saved, pico-dollars (app/core/caching.py); None: not known.
    cache_saved: int | None = None
    first_token_at: datetime | None = None
    first_reasoning_at: datetime | None = None
    ended_at: datetime | None = None


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
    "cache_write_tokens",
    "is_byok",
    "cost_picousd",
    "upstream_cost_picousd",
    "cost_source",
    "cache_saved_picousd",
    "first_token_at",
    "first_reasoning_at",
    "ended_at",
)


def upsert_generation_statement(insert: Callable[[sa.Table], Insert]) -> sa.Executable:
    """Insert a generation row, or bring an existing one up to date: built once per backend
    (`insert` is the backend's, the one with ON CONFLICT), executed with a record's values."""
    statement = insert(generations).values(binds(*(column.name for column in generations.c)))
    return statement.on_conflict_do_update(
        index_elements=[generations.c.id],
        set_={name: statement.excluded[name] for name in GENERATION_PROGRESS},
    )


def usage_by_message(
    *, message_id: str | None = None, conversation_id: str | None = None
) -> sa.Subquery:
    """Per message: tokens, cost and the number of generations, summed, for one message or for
    the messages of one conversation (exactly one of the two).

    The filter is inside the GROUP BY on purpose: neither SQLite nor PostgreSQL carries a join's
    condition into a grouped subquery, so an unfiltered one summed the whole table before the
    join kept one conversation's rows. With 50k conversations, 1M messages and 500k generations,
    reading a conversation of 20 messages took 621 ms (p50, SQLite; 1,166 ms on PostgreSQL;
    timed by hand, and `python -m bench.growth` measures the same read on 1,000,000 messages)
    that way; filtered here, it reads that conversation's generations through
    `ix_generations_conversation` and nothing else: 4-5 ms (2 ms on PostgreSQL), as on a small
    database (`tests/storage/test_query_plans.py` fails on a plan that reads a whole table).
    """
    if (message_id is None) == (conversation_id is None):
        raise TypeError("usage_by_message takes one of message_id, conversation_id")
    where = (
        generations.c.message_id == message_id
        if message_id is not None
        else generations.c.conversation_id == conversation_id
    )
    return (
        sa.select(
            generations.c.message_id,
            sa.func.sum(generations.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(generations.c.completion_tokens).label("completion_tokens"),
            sa.func.sum(generations.c.reasoning_tokens).label("reasoning_tokens"),
            sa.func.sum(generations.c.cost_picousd).label("cost_picousd"),
            sa.func.sum(generations.c.cache_saved_picousd).label("cache_saved_picousd"),
            sa.func.count().label("generation_count"),
        )
        .where(where)
        .group_by(generations.c.message_id)
        .subquery("usage")
    )


def conversation_cost(
    conversation_id: sa.ColumnElement[str], *, measure: str = "cost_picousd"
) -> sa.ColumnElement[Any]:
    """The cost of one conversation: its generations (every branch's, its title's) and those
    of the coach calls that reviewed it (`subject_conversation_id`), whose cost is spent on it.

    Two scalar subqueries correlated with `conversation_id` (a column of the outer query), added
    up (NULL only when neither knows a cost): summed per row the outer query returns, through
    `ix_generations_conversation` and `ix_conversations_subject`, so a page of conversations
    costs what its own generations cost, not the whole ledger (see
    `app/storage/conversations.py` for figures). One subquery with `conversation_id IN (the
    reviews)` OR'd in read all of `generations` on PostgreSQL. A coach call's cost is in its own
    conversation's total too: totals are per conversation, never to be added up across
    conversations (sum `generations` for that). `measure` is the column summed:
    `cache_saved_picousd` says what caching saved on the same generations.
    """
    own = (
        sa.select(sa.func.sum(generations.c[measure]))
        .where(generations.c.conversation_id == conversation_id)
        .scalar_subquery()
    )
    # Aliased, so an outer query over `conversations` never correlates it away.
    reviewer = conversations.alias("reviewer")
    reviewed = generations.alias("reviewed")
    reviews = (
        sa.select(sa.func.sum(reviewed.c[measure]))
        .select_from(reviewer.join(reviewed, reviewed.c.conversation_id == reviewer.c.id))
        .where(reviewer.c.subject_conversation_id == conversation_id)
        .scalar_subquery()
    )
    return sa.func.coalesce(own + reviews, own, reviews)


def cancel_streaming(*, message_ids: sa.Select[Any], ended_at: datetime) -> sa.Executable:
    """End the still-streaming generations of these messages as cancelled (their reply ended
    without them: an orphan swept up)."""
    return (
        generations.update()
        .where(
            generations.c.message_id.in_(message_ids),
            generations.c.status == GenerationStatus.STREAMING,
        )
        .values(status=GenerationStatus.CANCELLED, ended_at=ended_at)
    )


@dataclass(frozen=True)
class LateCost:
    """A generation's cost learnt after its reply ended (the generation record)."""

    message_id: str
    agent: str
    model: str
    cost: Decimal | None
    source: CostSource


class Ledger:
    def __init__(self, *, database: Database, writer: Writer) -> None:
        self._database = database
        self._writer = writer
        self._upsert_generation = upsert_generation_statement(writer.insert)

    def generation_steps(
        self,
        *,
        records: list[GenerationRecord],
        message_id: str,
        conversation_id: str,
        agent: str,
        user_id: str | None,
        key_id: str | None = None,
        job: str | None = None,
        touched_at: datetime | None = None,
    ) -> list[Step]:
        """The steps that save `records` as they stand, for a write of their reply's.

        `user_id` is whose spend they are (the reply's, a title's, None for no user's): kept on
        each row, so the spend stays theirs after the conversation is deleted. It is set when a
        row is first saved and never changed after (it is not in GENERATION_PROGRESS), as are
        a job's service key and job tag (app/jobs/); `touched_at`, a job's first heartbeat, is
        changed only by the heartbeats after it."""
        return [
            (
                self._upsert_generation,
                {
                    "id": record.id,
                    "message_id": message_id,
                    "conversation_id": conversation_id,
                    "agent": agent,
                    "user_id": user_id,
                    "key_id": key_id,
                    "job": job,
                    "touched_at": touched_at,
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
                    "cache_write_tokens": record.cache_write_tokens,
                    "is_byok": record.is_byok,
                    "cost_picousd": to_picos(record.cost),
                    "upstream_cost_picousd": to_picos(record.upstream_cost),
                    "cost_source": record.cost_source,
                    "cache_saved_picousd": record.cache_saved,
                    "cache_discount_picousd": None,
                    "first_token_at": record.first_token_at,
                    "first_reasoning_at": record.first_reasoning_at,
                    "ended_at": record.ended_at,
                },
            )
            for record in records
        ]

    async def pending_generations(
        self, *, message_ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Generations whose cost is still unknown (of these messages, or of any ended one)."""
        query = generations.select().where(
            generations.c.cost_source == CostSource.PENDING,
            generations.c.status != GenerationStatus.STREAMING,
        )
        if message_ids is not None:
            query = query.where(generations.c.message_id.in_(message_ids))
        return [dict(row._mapping) for row in await self._database.fetch_all(query)]

    async def settle_cost(
        self,
        *,
        record_id: str,
        cost: Decimal | None,
        source: CostSource,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        model: str | None = None,
        cache_discount: Decimal | None = None,
    ) -> LateCost | None:
        """Set a pending generation's cost once; a settled one is never overwritten. What was
        settled (None: the generation was not pending). The record's `cache_discount` is kept,
        and is the generation's cache saving: the usage that would have said it never came."""
        values: dict[str, Any] = {"cost_picousd": to_picos(cost), "cost_source": source}
        if cache_discount is not None:
            values["cache_discount_picousd"] = values["cache_saved_picousd"] = to_picos(
                cache_discount
            )
        if prompt_tokens is not None:
            values["prompt_tokens"] = prompt_tokens
        if completion_tokens is not None:
            values["completion_tokens"] = completion_tokens
        if model is not None:
            values["model"] = model
        g = generations
        [settled] = await self._writer.write(
            [
                g.update()
                .where(g.c.id == record_id, g.c.cost_source == CostSource.PENDING)
                .values(**values)
                .returning(g.c.message_id, g.c.agent, g.c.requested_model, g.c.model)
            ]
        )
        if not settled:
            return None
        message_id, agent, requested, answered = settled[0]
        return LateCost(
            message_id=message_id,
            agent=agent,
            model=answered or requested,
            cost=cost,
            source=source,
        )
