"""Budget reservations: the check and the reservation of a turn's worst-case cost in one step.

A turn's row in `budget_reservations` rides in the turn's own write (`Replies.start_turn`),
never a write of its own. When a limit applies, that write is awaited before the upstream call,
and its first step is a conditional INSERT … SELECT … WHERE (a `Guard`): when the turn does not
fit, it inserts nothing and the whole write is refused, so nothing of the turn is saved. It
fits when the user's live replies are under LIMIT_USER_CONCURRENT and, for each budget that
applies (the user's override, read by the statement, else the server default), everything
counted in its period (held reservations, settled costs, kept reservations) plus this turn's
worst case is under the limit. What is counted is read by the statement itself from the
running totals triggers keep in the same transactions (`budget_totals`, migration 13), so the
check sees every process's rows:

- SQLite: one writer at a time (the writer's BEGIN IMMEDIATE), so each INSERT sees all the
  reservations committed before it, from any process on the same file.
- PostgreSQL: READ COMMITTED would let two INSERTs both read the sums before either commits, so
  the write first takes transaction-scoped advisory locks, the user's and (with a global cap)
  the platform's, always in that order (no deadlock). The INSERT's snapshot is taken after the
  locks are granted, so it sees the reservation of whoever held them before. Advisory locks
  rather than `SELECT … FOR UPDATE` on a counter row: no row has to exist (or be upserted) first,
  and PostgreSQL releases them at commit or rollback, crash included. A turn's write does the
  same in one server-side call, `start_turn()` (migration 20, app/storage/turn_call.py): the
  locks, the check, the reservation and the turn's rows in one round trip, not seven; a job's
  and a title's reservation still go as the steps here.

With no limit at all, the reservation is a plain insert in the turn's write, which runs beside
the upstream call: the spend is still counted (for `/api/me/usage`, and for a budget set later
in the period), and the first token waits for no database.

A reservation ends with its reply (`end`), then is settled once its generations' costs are all
known: its amount becomes their sum (`settled`), or, if any cost stayed unknown (or no
generation row was saved), the worst case stays counted as spent (`kept`), visibly. A crashed
process's reservations are ended by the sweep once their reply is no longer streaming.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.core.states import CostSource, GenerationStatus, MessageStatus
from app.storage.tables import (
    budget_overrides,
    budget_reservations,
    budget_totals,
    generations,
    messages,
    now,
)
from app.storage.writer import Guard, Step, Writer, binds

# Advisory lock classes (the two-key form, a key space of its own: the migration lock's
# one-bigint key never meets these). The second key is hashtext(user_id); two users whose
# hashes collide only wait for each other.
USER_LOCK_CLASS = 0x5C0B1
GLOBAL_LOCK_CLASS = 0x5C0B2
# Built once, as every statement of a turn's write (app/storage/writer.py: `binds`).
USER_LOCK = sa.select(
    sa.func.pg_advisory_xact_lock(
        sa.literal(USER_LOCK_CLASS, sa.Integer),
        sa.func.hashtext(sa.bindparam("user_id", sa.String)),
    )
)
GLOBAL_LOCK = sa.select(
    sa.func.pg_advisory_xact_lock(
        sa.literal(GLOBAL_LOCK_CLASS, sa.Integer), sa.literal(0, sa.Integer)
    )
)

HELD, SETTLED, KEPT = "held", "settled", "kept"

_r = budget_reservations


@dataclass(frozen=True)
class Limits:
    """What one turn is checked against, in pico-dollars (None: no such limit)."""

    daily: int | None
    monthly: int | None
    global_daily: int | None
    concurrent: int | None

    @property
    def budgeted(self) -> bool:
        return any(v is not None for v in (self.daily, self.monthly, self.global_daily))

    @property
    def gated(self) -> bool:
        """Whether a turn must be checked before its upstream call."""
        return self.budgeted or self.concurrent is not None


@dataclass(frozen=True)
class Usage:
    """A user's counted amounts in pico-dollars: spent (settled or kept) and reserved (held)."""

    day_spent: int
    day_reserved: int
    day_kept: int  # the part of `day_spent` that is a reservation kept for an unknown cost
    month_spent: int
    month_reserved: int
    live: int  # the user's live replies, on every process


def _counted(scope: str, subject: Any, period: Any) -> sa.ColumnElement[Any]:
    """Everything counted in a period (held, settled and kept), from its running total: one row
    read by primary key, whatever the number of reservations (migration 13)."""
    t = budget_totals
    return sa.func.coalesce(
        sa.select(t.c.amount_picousd)
        .where(t.c.scope == scope, t.c.subject == subject, t.c.period == period)
        .scalar_subquery(),
        0,
    )


def _total(*where: Any) -> sa.ScalarSelect[Any]:
    return (
        sa.select(sa.func.coalesce(sa.func.sum(_r.c.amount_picousd), 0))
        .where(*where)
        .scalar_subquery()
    )


def _settle_statement(*where: Any) -> sa.Update:
    """Settle the held, ended reservations matching `where` whose costs are all known."""
    g = generations
    mine = g.c.message_id == _r.c.id
    unfinished = sa.exists().where(
        mine,
        sa.or_(g.c.cost_source == CostSource.PENDING, g.c.status == GenerationStatus.STREAMING),
    )
    unknown = sa.or_(
        sa.exists().where(mine, g.c.cost_source == CostSource.NONE),
        ~sa.exists().where(mine),  # nothing saved about the upstream call: its cost is unknown
    )
    cost = sa.select(sa.func.coalesce(sa.func.sum(g.c.cost_picousd), 0)).where(mine)
    return (
        _r.update()
        .where(_r.c.state == HELD, _r.c.ended_at.is_not(None), ~unfinished, *where)
        .values(
            state=sa.case((unknown, KEPT), else_=SETTLED),
            amount_picousd=sa.case((unknown, _r.c.amount_picousd), else_=cost.scalar_subquery()),
            settled_at=sa.bindparam("settled_at", type_=_r.c.settled_at.type),
        )
    )


SETTLE_ONE = _settle_statement(_r.c.id == sa.bindparam("message_id"))
SETTLE_READY = _settle_statement()
COLUMNS = [
    "id",
    "user_id",
    "day",
    "month",
    "reserved_picousd",
    "amount_picousd",
    "state",
    "created_at",
]
OVERRIDE_LIMITS = sa.select(
    budget_overrides.c.daily_overridden,
    budget_overrides.c.daily_picousd,
    budget_overrides.c.monthly_overridden,
    budget_overrides.c.monthly_picousd,
).where(budget_overrides.c.user_id == sa.bindparam("user_id"))
OPEN_RESERVATION = _r.insert().values(binds(*COLUMNS))
END_RESERVATION = (
    _r.update()
    .where(_r.c.id == sa.bindparam("message_id"), _r.c.ended_at.is_(None))
    .values(ended_at=sa.bindparam("ended_at", type_=_r.c.ended_at.type))
)


@dataclass(frozen=True)
class _Shape:
    """Which checks a reservation's statement makes: one statement per shape, built once."""

    daily: bool
    monthly: bool
    global_daily: bool
    concurrent: bool
    overrides: bool  # the user budgets are the user's override where they have one
    returning: bool  # PostgreSQL: `databases` tells an insert's rows only by RETURNING


@functools.cache
def _conditional_reservation(shape: _Shape) -> tuple[sa.Insert, tuple[tuple[str, str], ...]]:
    """INSERT … SELECT … WHERE the turn fits, with bind parameters, and what each parameter is
    (its name, the value's key): built and compiled once per shape (building it per turn cost
    more than running it; docs/budgets.md). Each use is a parameter of its own: one used twice,
    asyncpg deduces two types for and refuses."""
    params: list[tuple[str, str]] = []

    def param(key: str, type_: Any) -> sa.BindParameter[Any]:
        name = f"{key}_{len(params)}"
        params.append((name, key))
        return sa.bindparam(name, type_=type_)

    def new() -> sa.BindParameter[int]:
        return param("amount", sa.BigInteger)

    def limit_param(name: str) -> sa.BindParameter[int]:
        return param(name, sa.BigInteger)

    def user() -> sa.BindParameter[str]:
        return param("user_id", sa.String)

    fits: list[sa.ColumnElement[bool]] = []
    if shape.concurrent:
        live = (
            sa.select(sa.func.count())
            .select_from(_r)
            .where(_r.c.user_id == user(), _r.c.ended_at.is_(None))
            .scalar_subquery()
        )
        fits.append(live < limit_param("concurrent_limit"))
    o = budget_overrides
    for wanted, name, flag, value, scope, period in (
        (shape.daily, "daily_limit", o.c.daily_overridden, o.c.daily_picousd, "user_day", "day"),
        (
            shape.monthly,
            "monthly_limit",
            o.c.monthly_overridden,
            o.c.monthly_picousd,
            "user_month",
            "month",
        ),
    ):
        if not wanted:
            continue
        counted = _counted(scope, user(), param(period, sa.String))
        if shape.overrides:
            limit: Any = sa.case(
                (
                    sa.exists().where(o.c.user_id == user(), flag),
                    sa.select(value).where(o.c.user_id == user()).scalar_subquery(),
                ),
                else_=limit_param(name),
            )
            fits.append(sa.or_(limit.is_(None), counted + new() <= limit))
        else:
            fits.append(counted + new() <= limit_param(name))
    if shape.global_daily:
        counted = _counted("global_day", "", param("day", sa.String))
        fits.append(counted + new() <= limit_param("global_limit"))
    row = sa.select(
        param("id", sa.String),
        user(),
        param("day", sa.String),
        param("month", sa.String),
        new(),
        new(),
        param("state", sa.String),
        param("created_at", _r.c.created_at.type),
    ).where(*fits)
    insert = _r.insert().from_select(COLUMNS, row)
    return (insert.returning(_r.c.id) if shape.returning else insert), tuple(params)


@dataclass(frozen=True)
class Terms:
    """One reservation: what it reserves, for whom, in which periods, and the limits it must
    fit (`overrides`: each user budget is the user's override where they have one, read by
    the statement itself, else `limits`')."""

    message_id: str
    user_id: str
    day: str
    month: str
    amount: int
    limits: Limits
    overrides: bool


def reservation_steps(terms: Terms, *, postgres: bool) -> list[Step]:
    """The steps that reserve `terms.amount`, to ride in a write: when a limit applies, a
    `Guard` that inserts nothing, refusing the whole write, unless it fits every limit (on
    PostgreSQL after the advisory locks, as steps of their own); with no limit at all, a plain
    insert: the reservation still counts the spend. A turn's write on PostgreSQL does all this
    in one call instead (app/storage/turn_call.py)."""
    limits = terms.limits
    if not limits.gated:
        return [
            (
                OPEN_RESERVATION,
                {
                    "id": terms.message_id,
                    "user_id": terms.user_id,
                    "day": terms.day,
                    "month": terms.month,
                    "reserved_picousd": terms.amount,
                    "amount_picousd": terms.amount,
                    "state": HELD,
                    "created_at": now(),
                },
            )
        ]
    overrides = terms.overrides
    shape = _Shape(
        daily=overrides or limits.daily is not None,
        monthly=overrides or limits.monthly is not None,
        global_daily=limits.global_daily is not None,
        concurrent=limits.concurrent is not None,
        overrides=overrides,
        returning=postgres,
    )
    given: dict[str, Any] = {
        "id": terms.message_id,
        "user_id": terms.user_id,
        "day": terms.day,
        "month": terms.month,
        "amount": terms.amount,
        "state": HELD,
        "created_at": now(),
        "daily_limit": limits.daily,
        "monthly_limit": limits.monthly,
        "global_limit": limits.global_daily,
        "concurrent_limit": limits.concurrent,
    }
    statement, params = _conditional_reservation(shape)
    values = {name: given[key] for name, key in params}
    steps: list[Step] = []
    if postgres:
        steps.append((USER_LOCK, {"user_id": terms.user_id}))
        if limits.global_daily is not None:
            steps.append((GLOBAL_LOCK, {}))
    return [*steps, Guard((statement, values))]


class Budgets:
    def __init__(self, *, database: Database, writer: Writer, postgres: bool) -> None:
        self._database = database
        self._writer = writer
        self._postgres = postgres

    def reservation(self, terms: Terms) -> list[Step]:
        """`terms`' steps on this database (`reservation_steps`), to ride in a write."""
        return reservation_steps(terms, postgres=self._postgres)

    def end_steps(self, *, message_id: str) -> list[Step]:
        """The steps that end the reservation with its reply (however it ended): no longer
        live; settled if its cost is known. They ride in the reply's final write."""
        stamp = now()
        return [
            (END_RESERVATION, {"message_id": message_id, "ended_at": stamp}),
            (SETTLE_ONE, {"message_id": message_id, "settled_at": stamp}),
        ]

    async def reserve(self, terms: Terms) -> None:
        """A reservation in a write of its own; raises `WriteRefused` when it does not fit."""
        await self._writer.write(self.reservation(terms))

    async def end(self, *, message_id: str) -> None:
        """`end_steps` in a write of their own (a title's reservation: no reply row to ride in)."""
        await self._writer.write(self.end_steps(message_id=message_id))

    async def settle_ready(self) -> None:
        """Settle every ended reservation whose costs have all become known (after a lookup)."""
        await self._writer.write([(SETTLE_READY, {"settled_at": now()})])

    async def sweep(self, *, idle_since: datetime) -> int:
        """End the reservations of replies a dead process left (or never saved), then settle
        what can be; the number ended. A reservation older than `idle_since` whose reply is
        not streaming (swept up as interrupted, or never written) has no run left; a job's,
        once its generation row is no longer streaming."""
        streaming = sa.or_(
            sa.exists().where(
                messages.c.id == _r.c.id, messages.c.status == MessageStatus.STREAMING
            ),
            # A job (app/jobs/) has no message: its generation row says it is live, until
            # its own sweep finds its heartbeat stopped.
            sa.exists().where(
                generations.c.message_id == _r.c.id,
                generations.c.status == GenerationStatus.STREAMING,
            ),
        )
        stamp = now()
        ended, _ = await self._writer.write(
            [
                _r.update()
                .where(_r.c.ended_at.is_(None), _r.c.created_at < idle_since, ~streaming)
                .values(ended_at=stamp)
                .returning(_r.c.id),
                (SETTLE_READY, {"settled_at": stamp}),
            ]
        )
        return len(ended)

    async def usage(self, *, user_id: str, day: str, month: str) -> Usage:
        def amount(name: str, *when: Any) -> sa.ColumnElement[Any]:
            summed = sa.func.sum(sa.case((sa.and_(*when), _r.c.amount_picousd), else_=0))
            return sa.func.coalesce(summed, 0).label(name)

        held = _r.c.state == HELD
        # Written into the SQL: as parameters of no other type, PostgreSQL takes them for text,
        # which it will not sum.
        one, zero = sa.literal_column("1"), sa.literal_column("0")
        live = sa.func.sum(sa.case((_r.c.ended_at.is_(None), one), else_=zero))
        row = await self._database.fetch_one(
            sa.select(
                amount("day_spent", _r.c.day == day, ~held),
                amount("day_reserved", _r.c.day == day, held),
                amount("day_kept", _r.c.day == day, _r.c.state == KEPT),
                amount("month_spent", _r.c.month == month, ~held),
                amount("month_reserved", _r.c.month == month, held),
                sa.func.coalesce(live, 0).label("live"),
            ).where(_r.c.user_id == user_id, sa.or_(_r.c.month == month, _r.c.ended_at.is_(None)))
        )
        assert row is not None
        return Usage(**{name: int(value) for name, value in dict(row._mapping).items()})

    async def global_usage(self, *, day: str) -> tuple[int, int]:
        """What counts against the platform's daily cap on `day`: (spent, reserved)."""
        held = _r.c.state == HELD
        row = await self._database.fetch_one(
            sa.select(_total(_r.c.day == day, ~held), _total(_r.c.day == day, held))
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def override(self, *, user_id: str) -> dict[str, Any] | None:
        row = await self._database.fetch_one(
            budget_overrides.select().where(budget_overrides.c.user_id == user_id)
        )
        return dict(row._mapping) if row else None

    async def override_limits(self, *, user_id: str) -> dict[str, Any] | None:
        """The user's override, its limits only: read before every turn when there is no
        server budget (app/billing/budgets.py), so the writer's hot-path read."""
        return await self._writer.read_row(OVERRIDE_LIMITS, {"user_id": user_id})

    async def put_override(
        self,
        *,
        user_id: str,
        daily_overridden: bool,
        daily_picousd: int | None,
        monthly_overridden: bool,
        monthly_picousd: int | None,
    ) -> datetime:
        """Replace the user's override (an unset one follows the server default)."""
        stamp = now()
        values = {
            "daily_overridden": daily_overridden,
            "daily_picousd": daily_picousd,
            "monthly_overridden": monthly_overridden,
            "monthly_picousd": monthly_picousd,
            "updated_at": stamp,
        }
        await self._writer.write(
            [
                self._writer.insert(budget_overrides)
                .values(user_id=user_id, **values)
                .on_conflict_do_update(index_elements=[budget_overrides.c.user_id], set_=values)
            ]
        )
        return stamp
