"""The jobs tests' server: our app with an admin token, service keys made through its API, and
the official `openai` SDK as the client (a client nobody here wrote)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support import AppServer

ADMIN_TOKEN = "admin-secret-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_key(server: AppServer, **fields: Any) -> dict[str, Any]:
    """A new service key's answer (`key` is the secret), any model unless `models` says."""
    body = {"label": "enrichment", "models": "*", **fields}
    response = httpx.post(f"{server.url}/api/admin/keys", json=body, headers=ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def sdk(server: AppServer, key: str) -> openai.OpenAI:
    """The SDK as a host app sets it up, with its own retries off: each refusal is seen once."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=10)


@pytest.fixture
def jobs_server(start_server) -> Callable[..., AppServer]:
    def start(**overrides: Any) -> AppServer:
        return start_server(admin_token=ADMIN_TOKEN, **overrides)

    return start


@pytest.fixture
def server(jobs_server) -> AppServer:
    return jobs_server()


@pytest.fixture
def key(server) -> dict[str, Any]:
    return make_key(server)


@pytest.fixture
def client(server, key) -> Iterator[openai.OpenAI]:
    with sdk(server, key["key"]) as client:
        yield client
