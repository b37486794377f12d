"""What the lifespan builds and every route reads: passed explicitly, never a global."""

from __future__ import annotations

from dataclasses import dataclass

from databases import Database
from starlette.requests import Request

from app.admission.service import Admission
from app.agents.overrides import Agents
from app.billing.budgets import SpendControl
from app.core.stages import StageProbe
from app.http.auth.authenticator import Authenticator
from app.jobs.service import Jobs
from app.ops.metrics import Metrics
from app.ops.readiness import KeyCheck
from app.replies.redis_log import ReplyStreams
from app.replies.registry import Runs
from app.replies.signals import Signals
from app.settings import Settings
from app.storage.store import Store
from app.upstream.models_catalog import ModelCatalog
from app.upstream.openrouter import OpenRouterClient
from app.upstream.pool import ClientPool


@dataclass
class AppState:
    settings: Settings
    agents: Agents  # the file's configs merged with run-time overrides
    database: Database
    store: Store
    http: ClientPool
    client: OpenRouterClient
    runs: Runs
    models: ModelCatalog
    auth: Authenticator  # who is calling: JWTs, the JWKS cache, stream tokens
    spend: SpendControl  # budgets and live replies per user: reserved in the database
    admission: Admission  # limits, budgets, idempotency: a ticket or a refusal per turn
    metrics: Metrics | None  # None when METRICS_TOKEN is unset: nothing is counted
    key_check: KeyCheck  # /readyz's OpenRouter key check, cached
    signals: Signals  # stop requests and agent changes to and from the other processes
    streams: ReplyStreams | None = None  # live replies through Redis (REDIS_URL)
    stages: StageProbe | None = None  # STAGE_PROBE: where first tokens spend their time
    jobs: Jobs | None = None  # the host app's calls to /v1, with service keys (app/jobs/)


def app_state(request: Request) -> AppState:
    return request.state.app
