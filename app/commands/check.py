"""`python -m app check [--ping]`: is this deployment's OpenRouter set-up sound? A table, and a
non-zero exit when anything fails (for a release phase, a cron, or a person after a change).

    key        OpenRouter accepts OPENROUTER_API_KEY (`GET /key`)
    credits    credit left on the key: a warning below CREDITS_WARNING_USD, a failure at 0
    <agent>    each agent's model and fallbacks (after run-time overrides, read from the
               database) are in OpenRouter's catalog, with a price for prompt and completion
    ping       with --ping: one completion of one token per model; each is a generation of
               agent `check` in the ledger, with its cost, so checking is never spend unseen

A ping's generation row has a message and conversation id of its own that no message or
conversation row has: the ledger keeps costs without them (as it does for a deleted one).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import TextIO

import httpx

from app.agents.config import load_agents
from app.agents.overrides import Agents
from app.billing.costs import find_cost
from app.core.states import CostSource, GenerationStatus
from app.ops.readiness import check_key
from app.settings import Settings
from app.storage.database import connect_database, is_sqlite
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
    """Run every check, print the table to `out`; 0 when nothing failed, else 1."""
    rows: list[Row] = []
    if settings.openrouter_api_key is None:
        rows.append(Row("key", FAIL, "OPENROUTER_API_KEY is not set"))
        return _print(rows, out)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(settings.upstream_read_timeout, connect=10)
    ) as http:
        client = OpenRouterClient(
            http,
            base_url=settings.base_url,
            api_key=settings.openrouter_api_key.get_secret_value(),
            app_url=settings.app_url,
            app_title=settings.app_title,
        )
        key = await check_key(client)
        rows.append(Row("key", OK if key.ok else FAIL, key.message))
        if not key.ok:
            return _print(rows, out)
        rows.append(_credits(key.limit_remaining, settings.credits_warning_usd))
        database = await connect_database(settings)
        try:
            try:
                await require_migrated(database, url=settings.database_url)
            except MigrationsPending as exc:
                rows.append(Row("database", FAIL, str(exc)))
                return _print(rows, out)
            store = Store(database, sqlite_db=is_sqlite(settings.database_url))
            try:
                agents = Agents(load_agents(settings.agents_file))
                await agents.load(store)
                catalog = await _catalog(client, rows)
                models = _agent_rows(agents, settings, catalog, rows)
                if ping:
                    for model in models:
                        rows.append(await _ping(client, store, model, settings))
            finally:
                await store.writer.close()
        finally:
            await database.disconnect()
    return _print(rows, out)


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
    agents: Agents, settings: Settings, catalog: dict[str, ModelInfo], rows: list[Row]
) -> list[str]:
    """A row per agent; the distinct models of all of them, in order (what --ping calls)."""
    every: list[str] = []
    for name in agents.names():
        config = agents.effective(name)
        models = [config.effective_model(settings.default_model), *config.fallback_models]
        problems = []
        for model in models:
            info = catalog.get(model)
            if info is None:
                problems.append(f"{model} is not in the catalog")
            elif not info.pricing.known:
                problems.append(f"{model} has no price")
            if model not in every:
                every.append(model)
        rows.append(
            Row(f"agent {name}", FAIL if problems else OK, "; ".join(problems) or ", ".join(models))
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
