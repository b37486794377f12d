"""`python -m app check [--ping]`: is this deployment's set-up sound? A table, and a non-zero
exit when anything fails (for a release phase, a cron, or a person after a change).

    key        OpenRouter accepts OPENROUTER_API_KEY (`GET /key`); unset: a failure, and the
               checks below that need no OpenRouter still run
    upstream   instead of the key, when the local simulator answers (development without a key)
    credits    credit left on the key: a warning below CREDITS_WARNING_USD, a failure at 0
    database   it answers (DATABASE_URL) and has every migration
    catalog    the model list answers (OpenRouter's, or the simulator's)
    <agent>    each agent's model and fallbacks (after run-time overrides, read from the
               database) are in the catalog, with a price for prompt and completion
    ping       with --ping: one completion of one token per model; each is a generation of
               agent `check` in the ledger, with its cost, so checking is never spend unseen

A ping's generation row has a message and conversation id of its own that no message or
conversation row has: the ledger keeps costs without them (as it does for a deleted one).
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal
from typing import TextIO

import httpx

from app.agents.config import load_agents
from app.agents.overrides import Agents
from app.billing.costs import find_cost
from app.core.states import CostSource, GenerationStatus
from app.dev.simulator import Behaviour, FakeOpenRouter
from app.dev.threaded_server import ThreadedServer
from app.ops.readiness import check_key
from app.settings import ConfigError, Settings
from app.storage.database import DatabaseUnreachable, connect_database, is_sqlite
from app.storage.ledger import GenerationRecord
from app.storage.migrations import MigrationsPending, require_migrated
from app.storage.store import Store
from app.storage.tables import new_id, now
from app.upstream.models_catalog import ModelInfo, parse_model
from app.upstream.openrouter import Finish, OpenRouterClient, UpstreamError, Usage

CHECK_AGENT = "check"
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Row:
    check: str
    result: str
    detail: str


async def run_checks(settings: Settings, *, ping: bool, out: TextIO = sys.stdout) -> int:
    """Run every check, print the table to `out`; 0 when nothing failed, else 1. A failed
    check skips only what depends on it: without a key the database and the agents are still
    checked."""
    rows: list[Row] = []
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(timeout=httpx.Timeout(settings.upstream_read_timeout, connect=10))
        )
        client = await _upstream(settings, http, stack, rows)
        store = await _store(settings, stack, rows)
        if store is None:
            return _print(rows, out)
        try:
            agents = Agents(load_agents(settings.agents_file))
        except ConfigError as exc:
            rows.append(Row("agents", FAIL, str(exc)))
            return _print(rows, out)
        await agents.load(store)
        catalog = None if client is None else await _catalog(client, rows)
        models = _agent_rows(agents, settings, catalog, rows)
        if ping and client is not None:
            for model in models:
                rows.append(await _ping(client, store, model, settings))
    return _print(rows, out)


async def _upstream(
    settings: Settings, http: httpx.AsyncClient, stack: AsyncExitStack, rows: list[Row]
) -> OpenRouterClient | None:
    """The client the catalog and pings go through: OpenRouter's once its key is accepted, or
    the local simulator (started here, as the server would) when the settings choose it;
    None when there is nothing to ask."""
    if settings.use_simulator:
        simulator = FakeOpenRouter(default=Behaviour())
        server = stack.enter_context(ThreadedServer(simulator.app, log_level="warning"))
        rows.append(Row("upstream", OK, "the local OpenRouter simulator (no key is used)"))
        return _client(settings, http, base_url=f"{server.url}/api/v1", api_key="simulator")
    if settings.openrouter_api_key is None:
        rows.append(Row("key", FAIL, "OPENROUTER_API_KEY is not set"))
        return None
    client = _client(
        settings,
        http,
        base_url=settings.base_url,
        api_key=settings.openrouter_api_key.get_secret_value(),
    )
    key = await check_key(client)
    rows.append(Row("key", OK if key.ok else FAIL, key.message))
    if not key.ok:
        return None
    rows.append(_credits(key.limit_remaining, settings.credits_warning_usd))
    return client


def _client(
    settings: Settings, http: httpx.AsyncClient, *, base_url: str, api_key: str
) -> OpenRouterClient:
    return OpenRouterClient(
        http,
        base_url=base_url,
        api_key=api_key,
        app_url=settings.app_url,
        app_title=settings.app_title,
    )


async def _store(settings: Settings, stack: AsyncExitStack, rows: list[Row]) -> Store | None:
    """The database, connected and migrated (a row either way); None when it is not."""
    try:
        database = await connect_database(settings)
    except DatabaseUnreachable as exc:
        rows.append(Row("database", FAIL, str(exc)))
        return None
    stack.push_async_callback(database.disconnect)
    try:
        await require_migrated(database, url=settings.database_url)
    except MigrationsPending as exc:
        rows.append(Row("database", FAIL, str(exc)))
        return None
    rows.append(Row("database", OK, "answers, every migration applied"))
    store = Store(database, sqlite_db=is_sqlite(settings.database_url))
    stack.push_async_callback(store.writer.close)
    return store


def _credits(remaining: Decimal | None, warn_below: Decimal) -> Row:
    if remaining is None:
        return Row("credits", OK, "the key has no credit limit")
    if remaining <= 0:
        return Row("credits", FAIL, f"${remaining} left: replies will be refused")
    if remaining < warn_below:
        return Row("credits", WARN, f"${remaining} left (below CREDITS_WARNING_USD={warn_below})")
    return Row("credits", OK, f"${remaining} left")


async def _catalog(client: OpenRouterClient, rows: list[Row]) -> dict[str, ModelInfo]:
    try:
        raw = await client.list_models()
    except UpstreamError as exc:
        rows.append(Row("catalog", FAIL, f"OpenRouter's model list failed: {exc.code}"))
        return {}
    models = [model for model in map(parse_model, raw) if model is not None]
    rows.append(Row("catalog", OK, f"{len(models)} models"))
    return {model.id: model for model in models}


def _agent_rows(
    agents: Agents, settings: Settings, catalog: dict[str, ModelInfo] | None, rows: list[Row]
) -> list[str]:
    """A row per agent; the distinct models of all of them, in order (what --ping calls).
    Without a catalog (no upstream to ask), the models are listed unchecked."""
    every: list[str] = []
    for name in agents.names():
        config = agents.effective(name)
        models = [config.effective_model(settings.default_model), *config.fallback_models]
        problems = []
        for model in models:
            info = None if catalog is None else catalog.get(model)
            if catalog is not None and info is None:
                problems.append(f"{model} is not in the catalog")
            elif info is not None and not info.pricing.known:
                problems.append(f"{model} has no price")
            if model not in every:
                every.append(model)
        unchecked = " (not checked against a catalog)" if catalog is None else ""
        rows.append(
            Row(
                f"agent {name}",
                FAIL if problems else OK,
                "; ".join(problems) or ", ".join(models) + unchecked,
            )
        )
    return every


async def _ping(client: OpenRouterClient, store: Store, model: str, settings: Settings) -> Row:
    record = GenerationRecord(id=new_id(), attempt=1, requested_model=model, started_at=now())
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Reply with one word: ok"}],
        "max_tokens": 1,
        "temperature": 0,
    }
    result = Row(f"ping {model}", OK, "")
    try:
        events = await client.complete(body)
    except UpstreamError as exc:
        record.status, record.error_code = GenerationStatus.ERROR, exc.code
        record.cost, record.cost_source = Decimal(0), CostSource.NOT_BILLED
        result = Row(f"ping {model}", FAIL, exc.message)
    else:
        record.status, record.first_token_at = GenerationStatus.COMPLETE, now()
        for event in events:
            if isinstance(event, Finish):
                record.model = event.model or record.model
                record.generation_id = record.generation_id or event.generation_id
            elif isinstance(event, Usage):
                record.prompt_tokens = event.prompt_tokens
                record.completion_tokens = event.completion_tokens
                record.reasoning_tokens = event.reasoning_tokens
                record.cached_tokens = event.cached_tokens
                record.cache_write_tokens = event.cache_write_tokens
                record.is_byok, record.upstream_cost = event.is_byok, event.upstream_cost
                record.model = event.model or record.model
                record.generation_id = record.generation_id or event.generation_id
                if event.cost is not None:
                    record.cost, record.cost_source = event.cost, CostSource.USAGE
        if record.cost_source == CostSource.PENDING:
            found = await find_cost(
                client,
                generation_id=record.generation_id,
                timeout=settings.generation_lookup_timeout,
            )
            record.cost, record.cost_source = found["cost"], found["source"]
    record.ended_at = now()
    await store.writer.write(
        store.ledger.generation_steps(
            records=[record],
            message_id=new_id(),
            conversation_id=new_id(),
            agent=CHECK_AGENT,
            user_id=None,  # a ping is nobody's spend: in every total, in no user's report
        )
    )
    if result.result == OK:
        cost = "unknown" if record.cost is None else f"${record.cost}"
        result = Row(result.check, OK, f"answered by {record.model or model}, cost {cost}")
    return result


def _print(rows: list[Row], out: TextIO) -> int:
    width = max(len(row.check) for row in rows)
    for row in rows:
        out.write(f"{row.check:<{width}}  {row.result:<4}  {row.detail}\n")
    failed = sum(row.result == FAIL for row in rows)
    out.write(f"{'FAILED' if failed else 'all good'}: {len(rows)} checks, {failed} failed\n")
    return 1 if failed else 0
