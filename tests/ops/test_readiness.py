"""`/readyz` against the fake OpenRouter's `GET /key` answering 200, 401 and 500, and a
database without its migrations; `/healthz` stays the cheap one."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from app.ops.readiness import KeyStatus, check_key
from app.storage.migrations import MIGRATIONS
from app.upstream.openrouter import OpenRouterClient


def test_ready_when_the_database_and_the_key_answer_and_the_key_is_asked_once_a_minute(
    start_server, fake
):
    server = start_server(metrics_token="m")
    first = httpx.get(f"{server.url}/readyz", headers={"Authorization": "Bearer m"})
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "ready" and body["migrations"] == "ok"
    assert body["openrouter"]["limit_remaining_usd"] == "87.5"
    for _ in range(5):
        assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert fake.key_calls == 1  # cached for a minute
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert fake.key_calls == 1  # liveness never asks OpenRouter
    metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer m"}).text
    assert "streamchat_openrouter_limit_remaining_usd 87.5" in metrics


@pytest.mark.parametrize(
    ("status", "code"), [(401, "upstream_key_invalid"), (500, "upstream_unavailable")]
)
def test_not_ready_when_openrouter_refuses_the_key_or_fails(start_server, fake, status, code):
    fake.key_status = status
    server = start_server()
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == code
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # still alive


def test_a_key_check_waits_for_openrouter_a_bounded_time(fake, fake_url):
    fake.key_delay = 2.0

    async def check() -> KeyStatus:
        async with httpx.AsyncClient() as http:
            client = OpenRouterClient(
                http, base_url=fake_url, api_key="sk-or-x", app_url="http://t", app_title="t"
            )
            return await check_key(client, within=0.2)

    status = asyncio.run(check())
    assert status.code == "upstream_unavailable" and "did not answer" in status.message


def test_low_credit_is_ready_with_a_warning(start_server, fake, caplog):
    fake.key_data["limit_remaining"] = 1.25
    server = start_server(credits_warning_usd=5)
    with caplog.at_level(logging.WARNING, logger="app.ops.readiness"):
        assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert "OpenRouter credit is low: $1.25 left" in caplog.text


def test_not_ready_on_a_database_lacking_a_migration(start_server, database):
    server = start_server()
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    database.execute(f"DELETE FROM schema_migrations WHERE version = {MIGRATIONS[-1].version}")
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "migrations_pending"


METRICS = "readiness-metrics-token"
ADMIN = "readiness-admin-token"


def test_readiness_tells_the_public_ready_or_the_reasons_code_and_operators_the_details(
    start_server, fake
):
    # The key's label, its usage and its remaining credit are the operator's business: a
    # probe needs ready or not, and why in a code.
    server = start_server(metrics_token=METRICS, admin_token=ADMIN)
    public = httpx.get(f"{server.url}/readyz")
    assert (public.status_code, public.json()) == (200, {"status": "ready"})
    for token in (METRICS, ADMIN):
        detailed = httpx.get(f"{server.url}/readyz", headers={"Authorization": f"Bearer {token}"})
        assert detailed.json()["openrouter"]["limit_remaining_usd"] == "87.5"
    wrong = httpx.get(f"{server.url}/readyz", headers={"Authorization": "Bearer guess"})
    assert wrong.json() == {"status": "ready"}

    fake.key_status = 401
    refused = start_server(metrics_token=METRICS)
    public = httpx.get(f"{refused.url}/readyz")
    assert public.status_code == 503
    assert public.json()["error"]["code"] == "upstream_key_invalid"
    assert set(public.json()["error"]) == {"code", "message"}
    assert "401" not in public.text and "OpenRouter" not in public.text
