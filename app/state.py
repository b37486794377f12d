"""What the lifespan builds and every route reads: passed explicitly, never a global."""

from __future__ import annotations

from dataclasses import dataclass

from databases import Database
from starlette.requests import Request

from app.agents import AgentConfig
from app.openrouter import OpenRouterClient
from app.runs import Runs
from app.settings import Settings
from app.store import Store
from app.upstream_http import ClientPool


@dataclass
class AppState:
    settings: Settings
    agents: dict[str, AgentConfig]
    database: Database
    store: Store
    http: ClientPool
    client: OpenRouterClient
    runs: Runs


def app_state(request: Request) -> AppState:
    return request.state.app
