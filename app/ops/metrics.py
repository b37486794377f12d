"""Prometheus metrics: what on-call watches (`GET /metrics`, behind METRICS_TOKEN).

One `CollectorRegistry` per app, built by the lifespan, never prometheus-client's global one:
the tests run many apps in one process, and each must count only its own replies.

Nothing here runs per token. A reply is counted twice: when its run starts and when it ends
(`reply_started`, `reply_ended`, called by the registry of runs), and everything else about it
(time to first token, tokens, cost, errors, retries, fallbacks) is read at the end from its
generation records. Labels are bounded: agents come from the agents file, statuses and kinds
are fixed, models are those the agents are configured with (anything else is `other`), error
codes are our own (`upstream_429`, ...). No user id, conversation or message id is a label.

    streamchat_replies_started_total{agent}
    streamchat_replies_ended_total{agent,status}
    streamchat_time_to_first_token_seconds{part}     part: upstream | server (what we add)
    streamchat_reply_duration_seconds{agent,status}
    streamchat_live_replies, streamchat_open_sse_connections
    streamchat_upstream_errors_total{code}, streamchat_upstream_retries_total,
    streamchat_fallbacks_total{agent}
    streamchat_tokens_total{kind}                    prompt | completion | reasoning | cached
                                                     | cache_write
    streamchat_cost_usd_total{model,agent}           costs, when the reply ended or learnt later
    streamchat_generations_cost_unknown{source}      none | pending, read from the ledger per scrape
    streamchat_rated_replies{model,agent}            complete replies with a thumbs up or down,
    streamchat_rated_replies_positive_share{model,agent}   and the share rated up: beside
                                                     the cost per reply, read per scrape
    streamchat_database_write_seconds
    streamchat_openrouter_limit_remaining_usd        from /readyz's key check
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from databases import Database
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.core.states import CostSource, GenerationStatus
from app.storage.tables import feedback, generations, now
from app.storage.writer import Writer

if TYPE_CHECKING:
    from app.ops.observed import ObservedReply
    from app.storage.ledger import LateCost

OTHER = "other"
ERROR_CODE = re.compile(r"^[a-z0-9_]{1,48}$")
# Seconds: a first token in 50 ms to 30 s, a reply of up to ten minutes, a write of 1 ms to 5 s.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
UNKNOWN_SOURCES = (CostSource.NONE, CostSource.PENDING)


class Metrics:
    def __init__(
        self, *, known_models: Callable[[], Collection[str]], live_replies: Callable[[], int]
    ) -> None:
        self._known_models = known_models
        self.registry = registry = CollectorRegistry()
        self.replies_started = Counter(
            "streamchat_replies_started", "Replies started", ["agent"], registry=registry
        )
        self.replies_ended = Counter(
            "streamchat_replies_ended",
            "Replies ended, by status",
            ["agent", "status"],
            registry=registry,
        )
        self.first_token = Histogram(
            "streamchat_time_to_first_token_seconds",
            "Time to a reply's first token: `upstream` from our first request to OpenRouter "
            "(retries included), `server` what this server took before asking",
            ["part"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "streamchat_reply_duration_seconds",
            "A reply's run, from start to its final event",
            ["agent", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        Gauge(
            "streamchat_live_replies", "Replies generating in this process", registry=registry
        ).set_function(live_replies)
        self.open_streams = Gauge(
            "streamchat_open_sse_connections", "SSE responses open", registry=registry
        )
        self.upstream_errors = Counter(
            "streamchat_upstream_errors",
            "Failed upstream requests, by code",
            ["code"],
            registry=registry,
        )
        self.retries = Counter(
            "streamchat_upstream_retries",
            "Upstream requests that were retries",
            registry=registry,
        )
        self.fallbacks = Counter(
            "streamchat_fallbacks",
            "Replies answered by one of the agent's fallback models",
            ["agent"],
            registry=registry,
        )
        self.tokens = Counter(
            "streamchat_tokens", "Tokens, by kind, from usage", ["kind"], registry=registry
        )
        self.cost = Counter(
            "streamchat_cost_usd",
            "Cost in USD, counted when a reply ends or when its generation record gives it",
            ["model", "agent"],
            registry=registry,
        )
        self.costs_unknown = Gauge(
            "streamchat_generations_cost_unknown",
            "Generations in the ledger whose cost is unknown (none) or being looked up",
            ["source"],
            registry=registry,
        )
        self.rated = Gauge(
            "streamchat_rated_replies",
            "Complete replies their user rated (thumbs up or down), by the model that answered",
            ["model", "agent"],
            registry=registry,
        )
        self.positive_share = Gauge(
            "streamchat_rated_replies_positive_share",
            "The share of rated replies rated up (0 to 1), by the model that answered",
            ["model", "agent"],
            registry=registry,
        )
        self.database_writes = Histogram(
            "streamchat_database_write_seconds",
            "One write (a transaction of steps), as its caller waits for it",
            buckets=WRITE_BUCKETS,
            registry=registry,
        )
        self.limit_remaining = Gauge(
            "streamchat_openrouter_limit_remaining_usd",
            "Credit left on the OpenRouter key (GET /key's limit_remaining), when it has a limit",
            registry=registry,
        )

    # -- a reply's two points ---------------------------------------------------------------------

    def reply_started(self, run: ObservedReply) -> None:
        self.replies_started.labels(run.request.agent).inc()

    def reply_ended(self, run: ObservedReply) -> None:
        agent, records = run.request.agent, run.records
        self.replies_ended.labels(agent, run.status).inc()
        self.duration.labels(agent, run.status).observe((now() - run.created_at).total_seconds())
        first = next((r.first_token_at for r in records if r.first_token_at), None)
        if first is not None and records:
            asked = records[0].started_at
            self.first_token.labels("upstream").observe((first - asked).total_seconds())
            self.first_token.labels("server").observe(
                max((asked - run.created_at).total_seconds(), 0.0)
            )
        self.retries.inc(max(len(records) - 1, 0))
        for record in records:
            if record.status == GenerationStatus.ERROR:
                code = record.error_code or "unknown"
                self.upstream_errors.labels(code if ERROR_CODE.match(code) else OTHER).inc()
            for kind in ("prompt", "completion", "reasoning", "cached", "cache_write"):
                count = getattr(record, f"{kind}_tokens")
                if count:
                    self.tokens.labels(kind).inc(count)
            if record.cost:
                model = record.model or record.requested_model
                self.cost.labels(self.model_label(model), agent).inc(float(record.cost))
        answered = next((r.model for r in reversed(records) if r.model), None)
        if answered is not None and answered in run.request.fallback_models:
            self.fallbacks.labels(agent).inc()

    def cost_learnt(self, late: LateCost) -> None:
        if late.cost:
            self.cost.labels(self.model_label(late.model), late.agent).inc(float(late.cost))

    def model_label(self, model: str) -> str:
        return model if model in self._known_models() else OTHER

    # -- the rest ---------------------------------------------------------------------------------

    def time_writes(self, writer: Writer) -> None:
        """Time every write of `writer`: its `write` is replaced on the instance, so every
        aggregate holding the writer is timed without the storage package knowing of metrics."""
        write = writer.write
        observe = self.database_writes.observe

        async def timed(steps: Any) -> Any:
            started = time.perf_counter()
            try:
                return await write(steps)
            finally:
                observe(time.perf_counter() - started)

        writer.write = timed  # type: ignore[method-assign]

    async def exposition(self, database: Database) -> bytes:
        """The text format, after reading what only the ledger knows (an indexed count)."""
        query = (
            sa.select(generations.c.cost_source, sa.func.count())
            .where(generations.c.cost_source.in_(UNKNOWN_SOURCES))
            .group_by(generations.c.cost_source)
        )
        counts = {row[0]: row[1] for row in await database.fetch_all(query)}
        for source in UNKNOWN_SOURCES:
            self.costs_unknown.labels(str(source)).set(counts.get(source, 0))
        await self._ratings(database)
        return generate_latest(self.registry)

    async def _ratings(self, database: Database) -> None:
        # From `feedback` (rated replies only) to each one's completed generation.
        model = sa.func.coalesce(generations.c.model, generations.c.requested_model)
        one, zero = sa.literal_column("1"), sa.literal_column("0")
        query = (
            sa.select(
                model.label("model"),
                generations.c.agent,
                sa.func.count().label("rated"),
                sa.func.sum(sa.case((feedback.c.rating > 0, one), else_=zero)).label("positive"),
            )
            .select_from(
                feedback.join(generations, generations.c.message_id == feedback.c.message_id)
            )
            .where(generations.c.status == GenerationStatus.COMPLETE)
            .group_by(model, generations.c.agent)
        )
        totals: dict[tuple[str, str], list[int]] = {}
        self.rated.clear()  # a group whose ratings were all removed is gone, not stale
        self.positive_share.clear()
        for row in await database.fetch_all(query):
            counts = totals.setdefault((self.model_label(row["model"]), row["agent"]), [0, 0])
            counts[0] += int(row["rated"])
            counts[1] += int(row["positive"] or 0)
        for (name, agent), (rated, positive) in totals.items():
            self.rated.labels(name, agent).set(rated)
            self.positive_share.labels(name, agent).set(positive / rated)
