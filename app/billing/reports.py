"""Cost reports: the ledger (`generations`) summed per day, model, agent and user, exactly.

Every amount is summed by the database as integers (`SUM(cost_picousd)` over a BigInteger:
an integer on SQLite, `numeric` on PostgreSQL), and only turned into a decimal string of USD at
the edge (`usd_text`), so a report over a million generations is exact to the pico-dollar.

    report_with_totals(...)  the groups and their sum, in one query (the JSON of
                             `GET /api/admin/costs`, `/api/me/costs`)
    report(...)              one row per group, through a cursor (their CSV)
    line_items(...)          one row per generation, in keyset pages (`group_by=generation`)

What a row says:
- `generations`, `replies` (first attempts: a reply is in the group of its first generation),
  `complete_replies` (generations that completed: a reply has at most one); both read from the
  ledger alone, so a deleted conversation's spend still counts;
- the tokens of each kind: prompt, completion, reasoning (of the completion), cached and
  cache-write (of the prompt), from the ledger's columns;
- `cost_usd`: every known cost; `cache_saved_usd`: what prompt caching saved on the same
  generations (app/core/caching.py; negative when cache writes cost more than reads saved; a
  generation whose saving is not known counts 0); `exact_cost_usd`: the part of the cost from
  the stream's usage or the generation record (today the same amount: `not_billed` is 0 and
  `none`/`pending` have none);
- how many generations are `exact`, `not_billed`, `unknown` (`none`) and still `pending`: a
  cost that is not exact is not hidden in the total, it is counted beside it;
- `cost_per_complete_reply_usd`: `cost_usd` over `complete_replies`, to the pico-dollar
  (half-even), empty when there is none;
- beside it, what people thought of those replies: `rated_replies` (complete replies with a
  thumbs up or down, `feedback`) and `positive_share` (the share of them rated up, three
  places, empty when none is rated), so which model gives the best answers per dollar shows.
  Read by a second, small query (the rated replies of the range, joined to their generation)
  merged by group in Python: the report's own query stays on `generations` alone.

The user of a generation is the ledger's own `generations.user_id`, written with the row by the
run that spent it (the reply's or the title's user; migration 11 gave the rows before it their
conversation's, or their budget reservation's when the conversation was gone). So a deleted
conversation's spend stays its user's, in `group_by=user` and in `/api/me/costs`; only
generations of no user (`python -m app check` pings) have an empty `user`. No query here joins
`conversations`: a report reads `generations` alone, on PostgreSQL a month from its covering
index (migrations 8 and 11) and a year in a parallel scan whose groups are hashed, not sorted
(migration 12's statistics; docs/operations.md, "Measured").

The queries are here rather than in `app/storage/ledger.py`'s subqueries: they are the one
reader that groups generations by time, and they stream (`Database.iterate`, keyset pages).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.core.money import PICOS
from app.core.states import CostSource, GenerationStatus
from app.storage.tables import feedback, generations

GROUPS = ("day", "model", "agent", "user", "key", "job")  # key, job: jobs' (app/jobs/)
LINE_ITEMS = "generation"  # group_by=generation: one row per generation, CSV only
TWELVE_PLACES = Decimal("0.000000000001")
EXACT_SOURCES = (CostSource.USAGE, CostSource.GENERATION)

# The columns of a grouped row after its group keys, in CSV order.
MEASURES = (
    "generations",
    "replies",
    "complete_replies",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "cost_usd",
    "cache_saved_usd",
    "exact_cost_usd",
    "cost_per_complete_reply_usd",
    "rated_replies",
    "positive_share",
    "exact_generations",
    "not_billed_generations",
    "unknown_generations",
    "pending_generations",
)
LINE_ITEM_COLUMNS = (
    "started_at",
    "day",
    "id",
    "generation_id",
    "message_id",
    "conversation_id",
    "user",
    "key",
    "job",
    "agent",
    "attempt",
    "requested_model",
    "model",
    "status",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "cost_usd",
    "cache_saved_usd",
    "cost_source",
)
# The ledger's token counts (as `Run._apply_usage` records them from the usage chunk):
# `reasoning_tokens` are part of `completion_tokens`, `cached_tokens` (prompt tokens read from
# the provider's cache) and `cache_write_tokens` (written to it) part of `prompt_tokens`.
TOKEN_KINDS = (
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cache_write_tokens",
)
PAGE = 1000  # rows per keyset page of line items: one query per page, no transaction held
# The columns of `report_query` after its group keys: each a count or a sum (None: no row had
# a cost), so the groups' add up to the whole range's.
SUMMED = (
    "generations",
    "replies",
    "complete_replies",
    *TOKEN_KINDS,
    "cost_picousd",
    "cache_saved_picousd",
    "exact_picousd",
    "exact_generations",
    "not_billed_generations",
    "unknown_generations",
    "pending_generations",
)


@dataclass(frozen=True)
class ReportRange:
    """Days `start` to `end`, both included, in UTC; `user_id` set: that user's alone."""

    start: date
    end: date
    group_by: tuple[str, ...]
    user_id: str | None = None

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time(), tzinfo=UTC)

    @property
    def until(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), time(), tzinfo=UTC)


def usd_text(picos: int | None) -> str | None:
    """An exact decimal string of USD, twelve places: what JSON and CSV carry (None: unknown)."""
    if picos is None:
        return None
    return str((Decimal(int(picos)) / PICOS).quantize(TWELVE_PLACES))


def _day(dialect: str) -> sa.ColumnElement[Any]:
    if dialect == "sqlite":  # stored as UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff'
        return sa.func.date(generations.c.started_at)
    # 'UTC' written in the SQL, not a bind parameter: the expression must be the very one
    # migration 12 keeps statistics on, in a prepared statement's generic plan too (with a
    # parameter there, the planner would not know a year has 365 days and would sort again).
    return sa.func.date(sa.func.timezone(sa.literal_column("'UTC'"), generations.c.started_at))


def _keys(dialect: str) -> dict[str, sa.ColumnElement[Any]]:
    return {
        "day": _day(dialect),
        # The model that answered; the one asked for when none did (an error before any token).
        "model": sa.func.coalesce(generations.c.model, generations.c.requested_model),
        "agent": generations.c.agent,
        "user": generations.c.user_id,
        # A job's service key and job tag (empty for replies): "cost per strategy per day".
        "key": generations.c.key_id,
        "job": generations.c.job,
    }


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    # Literal 1 and 0, not bind parameters: PostgreSQL cannot type a parameter that is only a
    # CASE branch (asyncpg sends it as text, and SUM(text) does not exist).
    one, zero = sa.literal_column("1"), sa.literal_column("0")
    return sa.func.coalesce(sa.func.sum(sa.case((condition, one), else_=zero)), zero)


def _at(moment: datetime) -> sa.BindParameter[datetime]:
    # Written into the SQL rather than sent as a parameter. A report's range decides its plan
    # (a month: an index-only scan; a year: a parallel scan of the whole table), and asyncpg
    # prepares each statement once per connection: from its sixth run PostgreSQL may plan a
    # parameter it cannot see, estimate a small range, and keep that plan for every range
    # after (a year's report then took 0.78 s serially instead of 0.40-0.50 s in parallel).
    return sa.bindparam(None, moment, type_=generations.c.started_at.type, literal_execute=True)


def _filters(range_: ReportRange) -> list[sa.ColumnElement[bool]]:
    filters = [
        generations.c.started_at >= _at(range_.since),
        generations.c.started_at < _at(range_.until),
    ]
    if range_.user_id is not None:
        filters.append(generations.c.user_id == range_.user_id)
    return filters


def report_query(range_: ReportRange, *, dialect: str) -> sa.Select[Any]:
    keys = _keys(dialect)
    grouped = [keys[name].label(name) for name in range_.group_by]
    cost = generations.c.cost_picousd
    source = generations.c.cost_source
    query = sa.select(
        *grouped,
        sa.func.count().label("generations"),
        # Counted without DISTINCT (which sorts every row of the range, spilling to disk
        # over a year: 4.5 s against 0.6 s for 1M generations on PostgreSQL): a reply has
        # exactly one first attempt, and at most one generation that completed (a run only
        # retries after an error).
        _count_if(generations.c.attempt == 1).label("replies"),
        _count_if(generations.c.status == GenerationStatus.COMPLETE).label("complete_replies"),
        *(
            sa.func.coalesce(sa.func.sum(generations.c[name]), 0).label(name)
            for name in TOKEN_KINDS
        ),
        sa.func.sum(cost).label("cost_picousd"),
        sa.func.sum(generations.c.cache_saved_picousd).label("cache_saved_picousd"),
        sa.func.sum(sa.case((source.in_(EXACT_SOURCES), cost))).label("exact_picousd"),
        _count_if(source.in_(EXACT_SOURCES)).label("exact_generations"),
        _count_if(source == CostSource.NOT_BILLED).label("not_billed_generations"),
        _count_if(source == CostSource.NONE).label("unknown_generations"),
        _count_if(source == CostSource.PENDING).label("pending_generations"),
    ).where(*_filters(range_))
    if grouped:
        query = query.group_by(*(keys[name] for name in range_.group_by)).order_by(
            *(keys[name] for name in range_.group_by)
        )
    return query


def ratings_query(range_: ReportRange, *, dialect: str) -> sa.Select[Any]:
    """The rated complete replies of the range and how many were rated up, in the report's
    groups: from `feedback` (small: only rated replies) to each one's completed generation."""
    keys = _keys(dialect)
    grouped = [keys[name].label(name) for name in range_.group_by]
    query = (
        sa.select(
            *grouped,
            sa.func.count().label("rated"),
            _count_if(feedback.c.rating > 0).label("positive"),
        )
        .select_from(feedback.join(generations, generations.c.message_id == feedback.c.message_id))
        .where(*_filters(range_), generations.c.status == GenerationStatus.COMPLETE)
    )
    if grouped:
        query = query.group_by(*(keys[name] for name in range_.group_by))
    return query


Ratings = dict[tuple[Any, ...], tuple[int, int]]


def _group_key(record: Any, group_by: Sequence[str]) -> tuple[Any, ...]:
    # A day is `date` on PostgreSQL and ISO text on SQLite: ISO text either way.
    values = (record[name] for name in group_by)
    return tuple(value.isoformat() if isinstance(value, date) else value for value in values)


async def _ratings(database: Database, range_: ReportRange) -> Ratings:
    query = ratings_query(range_, dialect=database.url.dialect)
    return {
        _group_key(record, range_.group_by): (int(record["rated"]), int(record["positive"]))
        for record in await database.fetch_all(query)
    }


def _report_row(
    record: Any, group_by: Sequence[str], rated: tuple[int, int] = (0, 0)
) -> dict[str, Any]:
    row: dict[str, Any] = dict(zip(group_by, _group_key(record, group_by), strict=True))
    cost = int(record["cost_picousd"] or 0)
    complete = int(record["complete_replies"])
    per_reply = None
    if complete:
        per_reply = int((Decimal(cost) / complete).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    row.update(
        generations=int(record["generations"]),
        replies=int(record["replies"]),
        complete_replies=complete,
        **{name: int(record[name]) for name in TOKEN_KINDS},
        cost_usd=usd_text(cost),
        cache_saved_usd=usd_text(int(record["cache_saved_picousd"] or 0)),
        exact_cost_usd=usd_text(int(record["exact_picousd"] or 0)),
        cost_per_complete_reply_usd=usd_text(per_reply),
        rated_replies=rated[0],
        positive_share=f"{Decimal(rated[1]) / rated[0]:.3f}" if rated[0] else None,
        exact_generations=int(record["exact_generations"]),
        not_billed_generations=int(record["not_billed_generations"]),
        unknown_generations=int(record["unknown_generations"]),
        pending_generations=int(record["pending_generations"]),
    )
    return row


async def report(database: Database, range_: ReportRange) -> AsyncIterator[dict[str, Any]]:
    """The grouped rows, in group order, read through a cursor (one group at a time): the CSV,
    in bounded memory however many groups there are."""
    ratings = await _ratings(database, range_)
    query = report_query(range_, dialect=database.url.dialect)
    async for record in database.iterate(query):
        key = _group_key(record, range_.group_by)
        yield _report_row(record, range_.group_by, ratings.get(key, (0, 0)))


async def report_with_totals(
    database: Database, range_: ReportRange
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The grouped rows and the whole range as one row (`totals`), from one query: the JSON.

    Fetched whole, not through a cursor: the answer holds every row anyway, and PostgreSQL runs
    a query with parallel workers only when it is not read through a cursor (a year of 1M
    generations: 0.42 s against 0.69 s; docs/operations.md, "Measured"). The totals are the
    groups' sums, not a second query over the range: every measure is a count or a sum over
    generations, and each generation is in exactly one group (a reply's retries too: `replies`
    counts first attempts), so the sum is exact.
    """
    records = await database.fetch_all(report_query(range_, dialect=database.url.dialect))
    ratings = await _ratings(database, range_)
    sums = dict.fromkeys(SUMMED, 0)
    for record in records:
        for name in SUMMED:
            sums[name] += int(record[name] or 0)
    rated = (sum(r for r, _ in ratings.values()), sum(p for _, p in ratings.values()))
    rows = [
        _report_row(
            record, range_.group_by, ratings.get(_group_key(record, range_.group_by), (0, 0))
        )
        for record in records
    ]
    return rows, _report_row(sums, (), rated)


async def line_items(
    database: Database, range_: ReportRange
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every generation of the range in (started_at, id) order, PAGE rows per query.

    Keyset pages rather than one cursor: a year's export may take minutes to download, and a
    cursor would hold a connection and a transaction (PostgreSQL) for all of it.
    """
    day = _day(database.url.dialect).label("day")
    columns = [
        generations.c.started_at,
        day,
        generations.c.id,
        generations.c.generation_id,
        generations.c.message_id,
        generations.c.conversation_id,
        generations.c.user_id.label("user"),
        generations.c.key_id.label("key"),
        generations.c.job,
        generations.c.agent,
        generations.c.attempt,
        generations.c.requested_model,
        generations.c.model,
        generations.c.status,
        generations.c.error_code,
        generations.c.prompt_tokens,
        generations.c.completion_tokens,
        generations.c.reasoning_tokens,
        generations.c.cached_tokens,
        generations.c.cache_write_tokens,
        generations.c.cost_picousd,
        generations.c.cache_saved_picousd,
        generations.c.cost_source,
    ]
    base = sa.select(*columns).order_by(generations.c.started_at, generations.c.id).limit(PAGE)
    after: tuple[datetime, str] | None = None
    while True:
        query = base.where(*_filters(range_))
        if after is not None:
            started_at, last_id = after
            # The `>=` bound is what an index range scan starts from (a row-value comparison
            # is not, on SQLite); the OR only skips the rows of that instant already sent.
            query = query.where(
                generations.c.started_at >= started_at,
                sa.or_(generations.c.started_at > started_at, generations.c.id > last_id),
            )
        records = await database.fetch_all(query)
        if not records:
            return
        page = []
        for record in records:
            item = dict(record._mapping)
            item["started_at"] = item["started_at"].isoformat()
            if isinstance(item["day"], date):
                item["day"] = item["day"].isoformat()
            item["cost_usd"] = usd_text(item.pop("cost_picousd"))
            item["cache_saved_usd"] = usd_text(item.pop("cache_saved_picousd"))
            page.append(item)
        yield page
        if len(records) < PAGE:
            return
        last = records[-1]
        after = (last["started_at"], last["id"])
