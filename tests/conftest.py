"""Shared fixtures: a fake OpenRouter and our app, each under a real uvicorn server in a thread.

Streaming, pings, disconnects and resumption only behave as in production over a real socket,
so nothing here uses an in-process transport. Every test gets a database of its own, migrated:
a copy of a SQLite file by default, or, when TEST_POSTGRES_URL is set, its test process's
PostgreSQL database, emptied after the test before it (see `support.MigratedDatabases`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from databases import DatabaseURL

from app.dev.simulator import FakeOpenRouter
from app.dev.threaded_server import ThreadedServer
from app.main import create_app
from app.settings import Settings, normalize_database_url
from tests.support import (
    AppServer,
    DatabaseHandle,
    MigratedDatabases,
    ServerProcess,
    local_client,
    make_database,
    serve_process,
)

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
            "database: SQLite (a copy of a migrated file per test; set TEST_POSTGRES_URL to run"
            " on PostgreSQL)",
            redis_line,
        ]
    url = DatabaseURL(normalize_database_url(admin_url)).obscure_password
    where = f"a migrated database per test process, emptied between tests, created through {url}"
    return [f"database: PostgreSQL ({where})", redis_line]


# A test that uses one of these opens the test database, so it runs on both (marked `db`).
DATABASE_FIXTURES = frozenset({"database", "empty_database"})


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `db` every test whose fixtures include the test database, unless it is marked
    `any_database`: scripts/test runs only the `db` tests again on PostgreSQL. Mark `slow`
    every test that starts server processes, and run the `slow` ones first: pytest-xdist
    hands tests out in this order, so a long one started last cannot hold up a whole run."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if DATABASE_FIXTURES & fixtures and not item.get_closest_marker("any_database"):
            item.add_marker(pytest.mark.db)
        if "start_process" in fixtures:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


@pytest.fixture
def redis_url() -> str:
    """TEST_REDIS_URL (scripts/test starts a throwaway redis-server) with a database number of
    this test process's own, so parallel workers' keys never meet; without it the test skips,
    except in CI, where it fails: CI installs redis-server for it."""
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"TEST_REDIS_URL is unset in CI ({REDIS_HOW_TO})")
        pytest.skip(f"no TEST_REDIS_URL: {REDIS_HOW_TO}")
    return _url_for_worker(url)


def _url_for_worker(url: str) -> str:
    """`url` with database number 1 + the xdist worker's index (gw0 → 1); as is outside xdist.
    Redis has 16 by default: enough for 15 workers."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return url
    return urlsplit(url)._replace(path=f"/{1 + int(worker.removeprefix('gw'))}").geturl()


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


@pytest.fixture(scope="session")
def migrated_databases(tmp_path_factory) -> Iterator[MigratedDatabases]:
    """What `database` draws from: migrated once per test process (tests/support.py)."""
    databases = MigratedDatabases(tmp_path_factory.mktemp("migrated"))
    yield databases
    databases.close()


@pytest.fixture
def database(tmp_path, migrated_databases) -> Iterator[DatabaseHandle]:
    """The test's own database, every migration applied and no rows."""
    with migrated_databases.database(tmp_path) as handle:
        yield handle


@pytest.fixture
def empty_database(tmp_path) -> Iterator[DatabaseHandle]:
    """The test's own database with nothing in it, for tests of migrating itself."""
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
    with local_client(server.url) as http:
        yield http


@pytest.fixture
def start_process(database, fake_url, tmp_path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `python -m app serve` in a process of its own on the test's database and the fake
    OpenRouter, settings as environment variables (`start_process(REDIS_URL=…)`); every one
    still running is stopped (SIGTERM) after the test."""
    with ExitStack() as started:

        def start(**settings: str) -> ServerProcess:
            return started.enter_context(
                serve_process(
                    tmp_path=tmp_path, database_url=database.url, fake_url=fake_url, **settings
                )
            )

        yield start
