"""`Jobs`: who may call `/v1` and what each call may spend, and the jobs live in this process.

Admission of a job, in order, with nothing saved or sent upstream on a refusal:

    the key         Bearer sc-…, read from the database on every call      401 invalid_api_key
    the model       one the key allows                                     403 model_not_allowed
                    one OpenRouter lists (when the catalog is known)       404 model_not_found
    the rate        the key's RPM, in the same moving windows as chat's    429 + Retry-After
                    (Redis-shared when configured)
    the spend       the worst case reserved in one atomic step with the    402 budget_exceeded
                    check, against the key's own daily and monthly         429 (jobs at once)
                    budgets, the platform's daily one, and its concurrency 409 price_unknown
                    limit: the same statement chat's turns reserve with
                    (app/storage/budgets.py), under the key's subject

The heartbeat: every HEARTBEAT of the app (the replies' own), this process says its live jobs
are alive (`generations.touched_at`), and jobs of any process whose heartbeat stopped longer
than STALE_REPLY_AFTER ago (a crash) are ended as cancelled, their cost looked up in the
generation record; their reservations are ended by the replies' sweep and settled once the
cost is known.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from databases import Database

from app.billing.budgets import Periods, SpendControl, prompt_token_bound, worst_case
from app.core.money import to_picos
from app.core.outage import Outage, tend
from app.core.states import GenerationStatus
from app.errors import ApiError
from app.jobs.keys import ServiceKey, ServiceKeys
from app.jobs.relay import Job
from app.jobs.request import JobRequest
from app.settings import Settings
from app.storage.budgets import Limits
from app.storage.store import Store
from app.storage.tables import generations, new_id, now
from app.upstream.models_catalog import ModelCatalog
from app.upstream.openrouter import OpenRouterClient

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
_g = generations
LIVE_JOB = sa.and_(_g.c.key_id.is_not(None), _g.c.status == GenerationStatus.STREAMING)


class RateWindows(Protocol):
    """The moving windows chat's turns are counted in (app/http/limits.py's RequestLimits)."""

    async def count_turn(self, user_id: str, *, per_minute: int | None = None) -> None: ...


class Jobs:
    def __init__(
        self,
        *,
        store: Store,
        database: Database,
        client: OpenRouterClient,
        models: ModelCatalog,
        spend: SpendControl,
        limits: RateWindows,
        settings: Settings,
        spawn: Spawn,
        reconcile: Callable[..., None],
    ) -> None:
        self.store = store
        self.keys = ServiceKeys(database=database, writer=store.writer)
        self.client = client
        self._models = models
        self._spend = spend
        self._limits = limits
        self._settings = settings
        self.spawn = spawn  # background writes, which shutdown waits for
        self.reconcile = reconcile  # a cost looked up in the generation record, then settled
        self.live: dict[str, Job] = {}
        self._global_daily = to_picos(settings.budget_global_daily_usd)
        self._tending: asyncio.Task[None] | None = None
        self._stop_tending = asyncio.Event()
        self._outage = Outage("the heartbeat of live jobs")

    # -- admission --------------------------------------------------------------------------------

    async def key(self, token: str | None) -> ServiceKey:
        key = await self.keys.find(token) if token else None
        if key is None:
            raise ApiError(
                401,
                "invalid_api_key",
                "send Authorization: Bearer <service key>; this one is unknown or revoked"
                if token
                else "send Authorization: Bearer <service key>",
            )
        return key

    async def admit(self, key: ServiceKey, request: JobRequest) -> Job:
        """The job, its reservation saved when a limit applies (else saved beside its call)."""
        model = request.model
        if not key.allows(model):
            raise ApiError(
                403,
                "model_not_allowed",
                f"this key may not use {model}",
                details={"param": "model"},
            )
        view = await self._models.get()
        info = view.find(model)
        if view.available and info is None:
            raise ApiError(
                404,
                "model_not_found",
                f"The model `{model}` does not exist or you do not have access to it.",
                details={"param": "model"},
            )
        if key.rpm is not None:  # a key's rate is its own: LIMIT_USER_RPM is the users'
            await self._limits.count_turn(key.subject, per_minute=key.rpm)
        limits = Limits(
            daily=key.daily_picousd,
            monthly=key.monthly_picousd,
            global_daily=self._global_daily,
            concurrent=key.concurrency,
        )
        amount = self._worst_case(request, info.output_limit if info else None)
        if amount is None:
            if limits.budgeted:
                raise ApiError(
                    409,
                    "price_unknown",
                    f"the price of {model} (or its output limit) is not known, and a budget "
                    "applies: the call cannot be priced in advance; give `max_tokens`",
                    details={"param": "model"},
                )
            amount = 0
        periods = Periods.at(self._spend.clock())
        job_id = new_id()
        job = Job(
            self,
            job_id=job_id,
            key=key,
            request=request,
            reservation=self.store.budgets.reservation(
                message_id=job_id,
                user_id=key.subject,
                day=periods.day,
                month=periods.month,
                amount=amount,
                limits=limits,
                overrides=False,
            ),
            gated=limits.gated,
            refusal=lambda: self._spend.refusal_for(key.subject, limits, periods, amount),
        )
        await job.begin()
        return job

    def _worst_case(self, request: JobRequest, output_limit: int | None) -> int | None:
        """The most the call can cost, pico-dollars (None: a price or the bound unknown)."""
        pricing = self._models.known_pricing(request.model)
        max_tokens = request.max_tokens or output_limit
        if pricing is None or max_tokens is None:
            return None
        return worst_case(
            prompt_tokens=prompt_token_bound(request.body), max_tokens=max_tokens, pricing=pricing
        )

    # -- heartbeat and sweep ----------------------------------------------------------------------

    def start(self) -> None:
        tending = tend(
            self._beat,
            outage=self._outage,
            interval=self._settings.heartbeat_interval,
            stop=self._stop_tending,
        )
        self._tending = asyncio.create_task(tending, name="tend-jobs")

    async def _beat(self) -> None:
        """Our live jobs' heartbeat; the jobs a dead process left, ended and looked up."""
        stamp = now()
        live = [job.record.id for job in self.live.values()]
        idle_since = stamp - timedelta(seconds=self._settings.stale_reply_after)
        steps: list[Any] = []
        if live:
            steps.append(_g.update().where(_g.c.id.in_(live), LIVE_JOB).values(touched_at=stamp))
        steps.append(
            _g.update()
            .where(LIVE_JOB, _g.c.touched_at < idle_since)
            .values(status=GenerationStatus.CANCELLED, ended_at=stamp)
            .returning(_g.c.id, _g.c.generation_id)
        )
        outcome = await self.store.writer.write(steps)
        for record_id, generation_id in outcome[-1]:
            log.warning("job generation %s was left streaming: looking its cost up", record_id)
            self.reconcile(record_id=record_id, generation_id=generation_id)

    async def stop(self) -> None:
        if self._tending is not None:
            self._stop_tending.set()
            await self._tending
