"""Shared fixtures: a fake OpenRouter and our app, each under a real uvicorn server in a thread.

Streaming, pings, disconnects and resumption only behave as in production over a real socket,
so nothing here uses an in-process transport. Every test gets its own database: a SQLite file
by default, or a fresh PostgreSQL database when TEST_POSTGRES_URL is set (see `support.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from databases import DatabaseURL

from app.dev.simulator import FakeOpenRouter
from app.dev.threaded_server import ThreadedServer
from app.main import create_app
from app.settings import Settings, normalize_database_url
from tests.support import AppServer, DatabaseHandle, make_database

REDIS_HOW_TO = (
    "run scripts/test (it starts a throwaway redis-server: apt-get install redis-server) "
    "or set TEST_REDIS_URL=redis://127.0.0.1:6379/0"
)


def pytest_report_header(config) -> list[str]:
    admin_url = os.environ.get("TEST_POSTGRES_URL")
    redis = os.environ.get("TEST_REDIS_URL")
    redis_line = f"redis: {redis}" if redis else f"redis: none, its tests skip ({REDIS_HOW_TO})"
    if not admin_url:
        return [
            "database: SQLite (a file per test; set TEST_POSTGRES_URL to run on PostgreSQL)",
            redis_line,
        ]
    url = DatabaseURL(normalize_database_url(admin_url)).obscure_password
    return [f"database: PostgreSQL (a new database per test, created through {url})", redis_line]


@pytest.fixture
def redis_url() -> str:
    """TEST_REDIS_URL (scripts/test starts a throwaway redis-server); without it the test
    skips, except in CI, where it fails: CI installs redis-server for it."""
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"TEST_REDIS_URL is unset in CI ({REDIS_HOW_TO})")
        pytest.skip(f"no TEST_REDIS_URL: {REDIS_HOW_TO}")
    return url


@pytest.fixture(scope="session")
def fake_server() -> Iterator[tuple[FakeOpenRouter, ThreadedServer]]:
    fake = FakeOpenRouter()
    with ThreadedServer(fake.app, log_level="critical") as server:
        yield fake, server


@pytest.fixture
def fake(fake_server) -> FakeOpenRouter:
    fake, _ = fake_server
    fake.reset()
    return fake


@pytest.fixture
def fake_url(fake_server) -> str:
    return f"{fake_server[1].url}/api/v1"


@pytest.fixture
def database(tmp_path) -> Iterator[DatabaseHandle]:
    with make_database(tmp_path) as handle:
        yield handle


@pytest.fixture
def make_settings(fake, fake_url, database) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "app_env": "test",
            "openrouter_api_key": "sk-or-test-secret-key",
            "openrouter_model": "openai/gpt-4o",
            "openrouter_base_url": fake_url,
            "database_url": database.url,
            "upstream_read_timeout": 5.0,
            "upstream_retry_base_delay": 0.01,
            "generation_lookup_timeout": 3.0,
            "checkpoint_interval": 0.2,
            "shutdown_grace": 5.0,
            # A title is one more upstream call after a first reply: it would take behaviours
            # queued for the fake and add to its requests. The tests of titles turn it on.
            "auto_titles": False,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    return build


@pytest.fixture
def start_server(make_settings) -> Iterator[Callable[..., AppServer]]:
    """Start our app under uvicorn; stopped (lifespan shutdown included) after the test."""
    started: list[AppServer] = []

    def start(settings: Settings | None = None, **overrides: Any) -> AppServer:
        settings = settings or make_settings(**overrides)
        server = ThreadedServer(create_app(settings), timeout_graceful_shutdown=10)
        server.start()
        app_server = AppServer(server, settings)
        started.append(app_server)
        return app_server

    yield start
    for app_server in reversed(started):
        app_server.stop()


@pytest.fixture
def server(start_server) -> AppServer:
    return start_server()


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http
