"""The app factory. The lifespan owns the HTTP client, the database and the live runs.

`create_app(settings)` builds everything from the settings it is given, so tests run many apps
side by side, and nothing is built at import time. Without settings it is the process's entry
point, called by uvicorn as a factory (`uvicorn --factory app.main:create_app`, and each worker
`python -m app serve` spawns under WEB_CONCURRENCY): it then sets logging up and reads the
settings itself, ending the process with one line on a configuration error, as `python -m app`
does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware

from app.admission.limits import RequestLimits
from app.admission.service import Admission
from app.agents.config import load_agents
from app.agents.overrides import Agents
from app.billing.budgets import Clock, SpendControl, utc_now
from app.core.outage import quiet_pool_reconnections
from app.core.redact import install_access_log_redaction
from app.core.refusals import Refusal
from app.core.stages import StageProbe, StartMarks
from app.dev.simulator import Behaviour, FakeOpenRouter
from app.dev.threaded_server import ThreadedServer
from app.errors import EXCEPTION_HANDLERS
from app.http.auth.authenticator import Authenticator
from app.http.middleware import http_middleware
from app.http.openapi import routes as openapi_routes
from app.http.refusals import refusal_response
from app.http.routes import (
    agent_models,
    budgets,
    catalog,
    conversations,
    costs,
    feedback,
    health,
    jobs,
    me,
    models,
    pages,
    replies,
    service_keys,
    shares,
    uploads,
)
from app.http.routes import stages as stages_routes
from app.http.sse import drain_on_shutdown
from app.http.state import AppState
from app.jobs.service import Jobs
from app.ops.gc_freeze import start_up_frozen
from app.ops.logging import ReplyLog, RequestLog, configure_logging
from app.ops.metrics import Metrics
from app.ops.readiness import KeyCheck
from app.replies.redis_log import ReplyStreams
from app.replies.registry import Runs
from app.replies.signals import Signals
from app.settings import ConfigError, Settings, load_settings, refuse_to_start
from app.storage.database import connect_database, is_sqlite
from app.storage.migrations import MigrationsPending, migrate, require_migrated
from app.storage.store import Store
from app.upstream.models_catalog import ModelCatalog
from app.upstream.openrouter import OpenRouterClient
from app.upstream.pool import ClientPool

log = logging.getLogger("app")

SIMULATOR_BANNER = """
************************************************************************************
  No OPENROUTER_API_KEY: replies come from the LOCAL OPENROUTER SIMULATOR, not a model.
  Set OPENROUTER_API_KEY (and OPENROUTER_MODEL) in .env to talk to OpenRouter.
************************************************************************************"""

EPHEMERAL_DATABASE_BANNER = """
************************************************************************************
  APP_ENV=production on SQLITE (%s). A Heroku-like dyno's disk is wiped at
  every restart and deploy, and dynos do not share it: conversations and costs WILL BE
  LOST.
  Set DATABASE_URL to PostgreSQL (heroku addons:create heroku-postgresql sets it).
************************************************************************************"""


def _http_client(settings: Settings) -> ClientPool:
    timeout = httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_read_timeout,
        write=settings.upstream_connect_timeout,
        pool=settings.upstream_connect_timeout,
    )
    return ClientPool(timeout=timeout)


def create_app(settings: Settings | None = None, *, clock: Clock = utc_now) -> Starlette:
    """The app; `clock` says which UTC day and month a turn's spend counts in (tests move it)."""
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            configure_logging()
            refuse_to_start(exc)  # uvicorn would print a traceback
        configure_logging(json_lines=settings.logs_as_json)
        return create_app(settings)
    defaults = load_agents(settings.agents_file)  # a bad file fails here, before serving
    install_access_log_redaction()
    quiet_pool_reconnections()
    stages = StageProbe() if settings.stage_probe else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, AppState]]:
        async with AsyncExitStack() as stack:
            base_url = settings.base_url
            if settings.use_simulator:
                simulator = FakeOpenRouter(default=Behaviour(delay=0.03))
                server = stack.enter_context(ThreadedServer(simulator.app))
                base_url = f"{server.url}/api/v1"
                log.warning(SIMULATOR_BANNER)
            if settings.app_env == "production" and is_sqlite(settings.database_url):
                log.warning(
                    EPHEMERAL_DATABASE_BANNER,
                    "DATABASE_URL is unset"
                    if "database_url" not in settings.model_fields_set
                    else "DATABASE_URL is a file",
                )
            database = await connect_database(settings)
            stack.push_async_callback(database.disconnect)
            if settings.migrate_at_start:
                await migrate(database, url=settings.database_url)
            else:
                try:
                    await require_migrated(database, url=settings.database_url)
                except MigrationsPending as exc:
                    log.error("refusing to start: %s", exc)
                    raise
            store = Store(
                database,
                sqlite_db=is_sqlite(settings.database_url),
                busy_timeout=settings.database_busy_timeout,
            )
            stack.push_async_callback(store.writer.close)
            http = _http_client(settings)
            stack.push_async_callback(http.aclose)
            client = OpenRouterClient(
                http,
                base_url=base_url,
                api_key=settings.openrouter_api_key.get_secret_value()
                if settings.openrouter_api_key
                else None,
                app_url=settings.app_url,
                app_title=settings.app_title,
                attachments=store.uploads.chunks,
            )
            agents = Agents(defaults)
            await agents.load(store)
            metrics = None
            if settings.metrics_token is not None:
                metrics = Metrics(
                    known_models=lambda: _configured_models(agents, settings),
                    live_replies=lambda: len(runs.live),
                )
                metrics.time_writes(store.writer)
            streams = None
            if settings.redis_url is not None:
                # Closed after the runs' shutdown, so their final events reach the streams.
                streams = ReplyStreams(settings)
                stack.push_async_callback(streams.close)
                streams.start()
            # Fetched on first use, never awaited here: start-up must not wait on OpenRouter.
            model_catalog = ModelCatalog(
                client=client,
                store=store,
                ttl=settings.models_cache_ttl,
                recommended=settings.recommended_models,
            )
            stack.push_async_callback(model_catalog.aclose)
            spend = SpendControl(settings=settings, store=store, models=model_catalog, clock=clock)
            runs = Runs(
                store=store,
                client=client,
                settings=settings,
                agents=agents,
                spend=spend,
                observers=[ReplyLog()] if metrics is None else [ReplyLog(), metrics],
                outbox=streams.outbox if streams else None,
            )
            stack.push_async_callback(runs.shutdown)
            limits = RequestLimits(settings=settings, live=lambda: len(runs.live))
            job_service = Jobs(
                store=store,
                database=database,
                client=client,
                models=model_catalog,
                spend=spend,
                limits=limits,
                settings=settings,
                spawn=runs.spawn,  # the final writes of jobs too, which shutdown waits for
                reconcile=runs.recovery.reconcile,
            )
            stack.push_async_callback(job_service.stop)
            await _recover(store, runs)
            runs.recovery.start()
            job_service.start()
            watcher = asyncio.create_task(drain_on_shutdown(runs), name="drain-on-shutdown")
            stack.callback(watcher.cancel)
            signals = Signals(
                store=store, runs=runs, agents=agents, settings=settings, streams=streams
            )
            signals.start()
            stack.push_async_callback(signals.close)
            stack.enter_context(start_up_frozen())
            yield {
                "app": AppState(
                    settings=settings,
                    agents=agents,
                    database=database,
                    store=store,
                    http=http,
                    client=client,
                    runs=runs,
                    models=model_catalog,
                    auth=Authenticator(settings, http),  # JWKS fetched on first use, not here
                    spend=spend,
                    admission=Admission(store=store, spend=spend, limits=limits),
                    metrics=metrics,
                    key_check=KeyCheck(client, warn_below=settings.credits_warning_usd),
                    signals=signals,
                    streams=streams,
                    stages=stages,
                    jobs=job_service,
                )
            }

    return Starlette(
        routes=[
            *replies.routes,
            *conversations.routes,
            *feedback.routes,
            *shares.routes,
            *uploads.routes,
            *catalog.routes,
            *costs.routes,
            *models.routes,
            *agent_models.routes,
            *health.routes,
            *me.routes,
            *budgets.routes,
            *jobs.routes,
            *service_keys.routes,
            *stages_routes.routes,
            *pages.routes,
            *openapi_routes,
        ],
        lifespan=lifespan,
        exception_handlers={**EXCEPTION_HANDLERS, Refusal: refusal_response},
        # The request log outermost: its line and X-Request-ID cover every answer, a 413 too.
        middleware=[
            *([Middleware(StartMarks)] if stages is not None else []),
            Middleware(RequestLog),
            *http_middleware(settings),
        ],
    )


def _configured_models(agents: Agents, settings: Settings) -> set[str]:
    """The models metrics may name: the agents' (with fallbacks); any other is `other`."""
    models = {settings.default_model}
    for name in agents.names():
        config = agents.effective(name)
        models.add(config.effective_model(settings.default_model))
        models.update(config.fallback_models)
    return models


async def _recover(store: Store, runs: Runs) -> None:
    """Costs a previous process left unknown get looked up; orphans are swept by `Recovery`."""
    for row in await store.ledger.pending_generations():
        runs.recovery.reconcile(record_id=row["id"], generation_id=row["generation_id"])
