"""The budget tests' server: our app with a clock of the test's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.dev.threaded_server import ThreadedServer
from app.main import create_app
from tests.billing.budget_support import ADMIN_TOKEN, Clock
from tests.support import AppServer


@pytest.fixture
def start_app(make_settings) -> Iterator[Callable[..., AppServer]]:
    """Our app under uvicorn with a clock of the test's (`create_app(settings, clock=…)`)."""
    started: list[AppServer] = []

    def start(clock: Clock, **overrides: Any) -> AppServer:
        settings = make_settings(admin_token=ADMIN_TOKEN, **overrides)
        server = ThreadedServer(create_app(settings, clock=clock), timeout_graceful_shutdown=10)
        server.start()
        started.append(AppServer(server, settings))
        return started[-1]

    yield start
    for app_server in reversed(started):
        app_server.stop()
