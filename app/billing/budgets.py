"""Budgets: what a turn may cost at worst, which limits apply to whom, and the refusals.

A turn reserves its worst-case cost before its upstream call (`SpendControl.reserve`), in one
atomic step with the check (`app/storage/budgets.py`), and the reservation is replaced by the
real cost when it is known. The worst case, with no tokenizer at hand:

    prompt tokens  <= UTF-8 bytes of the whole request body as JSON (the larger of the text as
                      it is and NFKC-normalized), + PER_MESSAGE_TOKENS per message
                      + PER_REQUEST_TOKENS
    cost           <= prompt tokens x prompt price + max_tokens x completion price
                      + the per-request price, for the dearest model the request may end on
                      (its model and its fallbacks), rounded up to a whole pico-dollar.

Why the token bound holds: every token a BPE tokenizer (byte-level, or SentencePiece with byte
fallback) emits for text covers at least one byte of it, so text has at most as many tokens as
bytes; the JSON body contains every message's role and content, escaping only adds bytes; a
tokenizer that NFKC-normalizes first (an expansion of up to 18 times: U+FDFA) is covered by
measuring the normalized text too; the chat template's special tokens (4 to 8 a message in
ChatML, Llama 3, Mistral, Gemma templates) are the per-message allowance. Provider-side prompt
additions we cannot see are not covered (docs/budgets.md). `max_tokens` bounds the completion,
reasoning tokens included, as OpenRouter counts them.

Attachments (app/core/attachments.py) are in the request as placeholders: each adds its token
bound (an image by its pixel size, a PDF by its pages) to the prompt's, an image its model's
per-image price (`pricing.image`, where the catalog has one), and a PDF sent through a priced
file-parser engine that engine's price per page.
"""

from __future__ import annotations

import dataclasses
import json
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from app.core.attachments import PARSER_PAGE_PRICES, attachments_of, in_messages
from app.core.money import MAX_BUDGET_PICOS, PICOS, from_picos, to_picos, usd
from app.core.refusals import OverBudget, PriceUnknown, RateLimited, Refusal
from app.core.run_request import RunRequest
from app.settings import Settings
from app.storage.budgets import Limits, Usage
from app.storage.store import Store
from app.storage.writer import Step, WriteRefused
from app.upstream.models_catalog import MILLION, ModelCatalog, Pricing

PER_MESSAGE_TOKENS = 16
PER_REQUEST_TOKENS = 16
# No one can say when another reply ends; a client waiting this long usually finds a slot.
LIVE_RETRY_AFTER = 5

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound of the prompt tokens of an upstream request `body` (see the module doc)."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    size = max(len(text.encode("utf-8", "surrogatepass")), _nfkc_bytes(text))
    files = sum(a.token_bound() for a in in_messages(body.get("messages", ())))
    return size + files + PER_MESSAGE_TOKENS * len(body.get("messages", ())) + PER_REQUEST_TOKENS


def message_token_bound(message: dict[str, Any]) -> int:
    """What one message adds to `prompt_token_bound` of a body it joins: its JSON (the larger
    size, plain or NFKC), the comma before it, its per-message allowance.

    So the bound of a body is at most the bound of the body without some of its messages plus
    theirs: the larger of two sums is at most the sum of each part's larger (NFKC cannot join
    across the `},{` between messages, which compose with nothing). History is fitted to a
    context window with it one message at a time (app/replies/fitting.py), never re-measuring
    the whole request."""
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    size = max(len(text.encode("utf-8", "surrogatepass")), _nfkc_bytes(text))
    return size + sum(a.token_bound() for a in attachments_of(message)) + 1 + PER_MESSAGE_TOKENS


def _nfkc_bytes(text: str) -> int:
    # Only non-ASCII text can expand (ASCII is NFKC-stable): skip the normalization otherwise.
    if text.isascii():
        return 0
    return len(unicodedata.normalize("NFKC", text).encode("utf-8", "surrogatepass"))


def file_charges(body: dict[str, Any]) -> tuple[int, Decimal]:
    """A request's images, and what its PDFs' parsing costs at most (USD): the pages of its
    PDFs at its file-parser engine's price (none without the plugin: the model reads them)."""
    attachments = list(in_messages(body.get("messages", ())))
    images = sum(1 for a in attachments if a.is_image)
    engine = next(
        (
            plugin.get("pdf", {}).get("engine")
            for plugin in body.get("plugins", ())
            if plugin.get("id") == "file-parser"
        ),
        None,
    )
    price = PARSER_PAGE_PRICES.get(engine, Decimal(0)) if engine else Decimal(0)
    pages = sum(a.pages or 1 for a in attachments if not a.is_image)
    return images, pages * price


def worst_case(
    *,
    prompt_tokens: int,
    max_tokens: int,
    pricing: Pricing,
    images: int = 0,
    parsing: Decimal = Decimal(0),
) -> int:
    """The most a request priced at `pricing` can cost, in pico-dollars, rounded up; past any
    budget (a model at an absurd price), one more than the largest: refused by every limit,
    and never a number the database cannot store. `images` are priced at the model's
    per-image price where it has one; `parsing` (USD) is its PDFs' parser charge."""
    assert pricing.input is not None and pricing.output is not None
    amount = (
        prompt_tokens * pricing.input / MILLION
        + max_tokens * pricing.output / MILLION
        + (pricing.request or Decimal(0))
        + images * (pricing.image or Decimal(0))
        + parsing
    )
    return min(math.ceil(amount * PICOS), MAX_BUDGET_PICOS + 1)


@dataclass(frozen=True)
class Periods:
    """The UTC day and month a moment falls in, and when each next resets."""

    day: str
    month: str
    day_resets_at: datetime
    month_resets_at: datetime

    @classmethod
    def at(cls, moment: datetime) -> Periods:
        moment = moment.astimezone(UTC)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        first = midnight.replace(day=1)
        next_month = (first + timedelta(days=32)).replace(day=1)
        return cls(
            day=moment.strftime("%Y-%m-%d"),
            month=moment.strftime("%Y-%m"),
            day_resets_at=midnight + timedelta(days=1),
            month_resets_at=next_month,
        )


def _usd(picos: int | None) -> float | None:
    return usd(from_picos(picos))


@dataclass(frozen=True)
class Reservation:
    """A turn's reservation, to ride in its write (`Replies.start_turn`)."""

    steps: list[Step]
    # A limit applies: the write is awaited before the upstream call, and `WriteRefused`
    # means the turn does not fit (`SpendControl.refusal`). Else it runs beside the call.
    gated: bool
    user_id: str
    amount: int
    periods: Periods


class SpendControl:
    """Budgets and the per-user live-reply limit, checked and reserved per turn.

    With server-wide budgets, the user's override (if any) is read by the reservation's own
    statement. Without, only the user's override can make a limit: it is read first, one
    primary-key lookup, and a turn no limit applies to is not held up by the database at all.
    """

    def __init__(
        self, *, settings: Settings, store: Store, models: ModelCatalog, clock: Clock
    ) -> None:
        self._settings = settings
        self._store = store
        self._models = models
        self.clock = clock
        self._defaults = Limits(
            daily=to_picos(settings.budget_user_daily_usd),
            monthly=to_picos(settings.budget_user_monthly_usd),
            global_daily=to_picos(settings.budget_global_daily_usd),
            concurrent=settings.limit_user_concurrent,
        )

    async def limits_for(self, user_id: str) -> Limits:
        """The server defaults, with the user's override (set by an admin) where it has one."""
        daily, monthly = self._defaults.daily, self._defaults.monthly
        override = await self._store.budgets.override_limits(user_id=user_id)
        if override is not None:
            if override["daily_overridden"]:
                daily = override["daily_picousd"]
            if override["monthly_overridden"]:
                monthly = override["monthly_picousd"]
        return dataclasses.replace(self._defaults, daily=daily, monthly=monthly)

    def _worst_case(self, request: RunRequest) -> int | None:
        """The turn's worst case, or None when a model's price is unknown."""
        body = request.upstream_body()
        prompt_tokens = prompt_token_bound(body)
        images, parsing = file_charges(body)
        worst = 0
        for model_id in (request.model, *request.fallback_models):
            pricing = self._models.known_pricing(model_id)
            if pricing is None:
                return None
            worst = max(
                worst,
                worst_case(
                    prompt_tokens=prompt_tokens,
                    max_tokens=request.max_tokens,
                    pricing=pricing,
                    images=images,
                    parsing=parsing,
                ),
            )
        return worst

    async def plan(self, request: RunRequest) -> Reservation:
        """The turn's reservation of its worst case (its message id is the reservation's), or
        `PriceUnknown` when a budget applies and a model's price is not known (no budget:
        0 is reserved, and the real cost still counts once known)."""
        await self._models.get()  # the catalog's first load (memory, else the database)
        # With server budgets the statement reads the override; else it is read here.
        folded = self._defaults.budgeted
        limits = self._defaults if folded else await self.limits_for(request.user_id)
        amount = self._worst_case(request)
        if amount is None:
            if limits.budgeted and (
                not folded or (await self.limits_for(request.user_id)).budgeted
            ):
                model = next(
                    m
                    for m in (request.model, *request.fallback_models)
                    if self._models.known_pricing(m) is None
                )
                raise PriceUnknown(
                    f"the price of {model} is not known, and a budget applies: "
                    "the turn cannot be priced in advance",
                    details={"model": model},
                )
            amount = 0
        periods = Periods.at(self.clock())
        steps = self._store.budgets.reservation(
            message_id=request.message_id,
            user_id=request.user_id,
            day=periods.day,
            month=periods.month,
            amount=amount,
            limits=limits,
            overrides=folded,
        )
        return Reservation(
            steps=steps,
            gated=limits.gated,
            user_id=request.user_id,
            amount=amount,
            periods=periods,
        )

    async def reserve(self, request: RunRequest) -> None:
        """Reserve a call's worst case in a write of its own (a title: no turn rows to ride
        in), or raise the refusal: `OverBudget`, `PriceUnknown`, `RateLimited`."""
        reservation = await self.plan(request)
        try:
            await self._store.budgets.reserve(reservation.steps)
        except WriteRefused:
            raise await self.refusal(reservation) from None

    async def refusal(self, reservation: Reservation) -> Refusal:
        """Why a reservation did not fit: `OverBudget` or `RateLimited` (live replies)."""
        user_id = reservation.user_id
        limits = await self.limits_for(user_id)
        return await self.refusal_for(user_id, limits, reservation.periods, reservation.amount)

    async def refusal_for(
        self, user_id: str, limits: Limits, periods: Periods, amount: int
    ) -> Refusal:
        """Why a reservation of `user_id`'s (a user's, or a service key's subject: app/jobs/)
        did not fit, read after the fact: the limit with the least room (another turn may have
        ended meanwhile; the figures are those of now)."""
        usage = await self._store.budgets.usage(
            user_id=user_id, day=periods.day, month=periods.month
        )
        # With no budget only the live count can have refused it, though a reply may have
        # ended since.
        if limits.concurrent is not None and (
            usage.live >= limits.concurrent or not limits.budgeted
        ):
            return RateLimited(
                f"you have {limits.concurrent} replies streaming, the most allowed at once; "
                "wait for one to finish",
                limit=limits.concurrent,
                remaining=0,
                retry_after=LIVE_RETRY_AFTER,
                details={"limit": "concurrent_replies"},
            )
        candidates = []
        if limits.daily is not None:
            candidates.append(
                ("daily", limits.daily, usage.day_spent, usage.day_reserved, periods.day_resets_at)
            )
        if limits.monthly is not None:
            candidates.append(
                (
                    "monthly",
                    limits.monthly,
                    usage.month_spent,
                    usage.month_reserved,
                    periods.month_resets_at,
                )
            )
        if limits.global_daily is not None:
            spent, reserved = await self._store.budgets.global_usage(day=periods.day)
            candidates.append(
                ("global", limits.global_daily, spent, reserved, periods.day_resets_at)
            )
        scope, limit, spent, reserved, resets_at = min(candidates, key=lambda c: c[1] - c[2] - c[3])
        what = {
            "daily": "your daily budget",
            "monthly": "your monthly budget",
            "global": "the service's daily budget",
        }[scope]
        return OverBudget(
            f"this message could cost up to ${from_picos(amount):.4f}, more than what is left "
            f"of {what} of ${from_picos(limit):.2f}; it resets at {resets_at.isoformat()}",
            details={
                "scope": scope,
                "limit_usd": _usd(limit),
                "spent_usd": _usd(spent),
                "reserved_usd": _usd(reserved),
                "resets_at": resets_at.isoformat(),
            },
        )

    async def headroom(self, user_id: str) -> list[tuple[str, int, int]]:
        """What is left of each budget that applies to the user now: (scope, limit, left) in
        pico-dollars, scope `daily`, `monthly` or `global`; [] when none applies. What the
        model list's `affordable` is read against (reading, not reserving: a turn is still
        checked and reserved on its own)."""
        limits = await self.limits_for(user_id)
        if not limits.budgeted:
            return []
        periods = Periods.at(self.clock())
        usage = await self._store.budgets.usage(
            user_id=user_id, day=periods.day, month=periods.month
        )
        left = []
        if limits.daily is not None:
            left.append(("daily", limits.daily, usage.day_spent + usage.day_reserved))
        if limits.monthly is not None:
            left.append(("monthly", limits.monthly, usage.month_spent + usage.month_reserved))
        if limits.global_daily is not None:
            spent, reserved = await self._store.budgets.global_usage(day=periods.day)
            left.append(("global", limits.global_daily, spent + reserved))
        return [(scope, limit, limit - counted) for scope, limit, counted in left]

    async def usage(self, user_id: str) -> dict[str, Any]:
        """`GET /api/me/usage`: today's and this month's spend, reservations, limits, resets."""
        limits = await self.limits_for(user_id)
        periods = Periods.at(self.clock())
        usage: Usage = await self._store.budgets.usage(
            user_id=user_id, day=periods.day, month=periods.month
        )
        return {
            "user_id": user_id,
            "day": {
                "period": periods.day,
                "spent_usd": _usd(usage.day_spent),
                "reserved_usd": _usd(usage.day_reserved),
                "unknown_cost_usd": _usd(usage.day_kept),
                "limit_usd": _usd(limits.daily),
                "resets_at": periods.day_resets_at.isoformat(),
            },
            "month": {
                "period": periods.month,
                "spent_usd": _usd(usage.month_spent),
                "reserved_usd": _usd(usage.month_reserved),
                "limit_usd": _usd(limits.monthly),
                "resets_at": periods.month_resets_at.isoformat(),
            },
            "live_replies": usage.live,
            "limits": {
                "requests_per_minute": self._settings.limit_user_rpm,
                "concurrent_replies": limits.concurrent,
            },
        }
