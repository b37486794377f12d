"""`GET /metrics`: scraped after real replies (one complete, one stopped, one failed upstream)
and read back with prometheus-client's own parser."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from httpx_sse import EventSource
from prometheus_client.parser import text_string_to_metric_families

from app.dev.simulator import Behaviour
from tests.support import local_client, read_sse, settled_generations, wait_for

TOKEN = "metrics-token-for-tests"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}


def scrape(http: httpx.Client) -> dict[tuple[str, tuple], float]:
    response = http.get("/metrics", headers=SCRAPE)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_replies_tokens_costs_errors_and_streams(start_server, fake, database):
    server = start_server(metrics_token=TOKEN)
    with local_client(server.url) as http:
        # 1. a complete reply, with a known cost
        fake.enqueue(Behaviour(tokens=["a", "b", "c"], cost=Decimal("0.00025")))
        events = read_sse(http, "POST", "/api/chat", json={"message": "hello there"})
        assert events[-1].event == "done"

        # 2. a reply stopped while it streams, its SSE connection counted while open
        fake.enqueue(Behaviour(tokens=["x"] * 200, delay=0.02))
        reply = http.post("/api/chat/messages", json={"message": "long"}).json()
        with http.stream("GET", reply["stream_url"]) as response:
            for count, _ in enumerate(EventSource(response).iter_sse(), start=1):
                if count == 3:
                    assert value(scrape(http), "streamchat_open_sse_connections") == 1
                    assert value(scrape(http), "streamchat_live_replies") == 1
                    http.post(f"/api/messages/{reply['message_id']}/stop")
        settled_generations(database, reply["message_id"])

        # 3. an upstream error before any token, not retryable
        fake.enqueue(Behaviour(status=400))
        events = read_sse(http, "POST", "/api/chat", json={"message": "fail"})
        assert events[-1].event == "error"

        # 4. a retried one: 503, then a success
        fake.enqueue(Behaviour(status=503), Behaviour(tokens=["ok"]))
        assert read_sse(http, "POST", "/api/chat", json={"message": "retry"})[-1].event == "done"

        samples = wait_for(
            lambda: (
                (s := scrape(http))
                and value(s, "streamchat_replies_ended_total", agent="chat", status="complete") == 2
                and s
            ),
            what="four replies counted",
        )

    assert value(samples, "streamchat_replies_started_total", agent="chat") == 4
    for status, count in (("complete", 2), ("stopped", 1), ("error", 1)):
        assert (
            value(samples, "streamchat_replies_ended_total", agent="chat", status=status) == count
        )
    assert value(samples, "streamchat_upstream_errors_total", code="upstream_400") == 1
    assert value(samples, "streamchat_upstream_errors_total", code="upstream_503") == 1
    assert value(samples, "streamchat_upstream_retries_total") == 1
    # Three replies got a first token: the complete ones and the stopped one.
    for part in ("upstream", "server"):
        assert value(samples, "streamchat_time_to_first_token_seconds_count", part=part) == 3
    assert (
        value(samples, "streamchat_reply_duration_seconds_count", agent="chat", status="stopped")
        == 1
    )
    # Tokens from usage: 3 + 1 completion tokens of the complete replies (the stopped one's
    # usage never came on its stream).
    assert value(samples, "streamchat_tokens_total", kind="completion") == 4
    assert value(samples, "streamchat_tokens_total", kind="prompt") > 0
    # Every cost in the ledger, the stopped reply's too: learnt from its generation record
    # after the reply ended, and counted then.
    [ledger] = database.query("SELECT SUM(cost_picousd) AS total FROM generations")
    costs = {
        labels: v for (name, labels), v in samples.items() if name == "streamchat_cost_usd_total"
    }
    assert sum(costs.values()) == pytest.approx(int(ledger["total"]) / 10**12)
    assert costs[(("agent", "chat"), ("model", "openai/gpt-4o"))] >= 0.00025
    assert value(samples, "streamchat_open_sse_connections") == 0
    assert value(samples, "streamchat_live_replies") == 0
    assert value(samples, "streamchat_database_write_seconds_count") > 0
    assert value(samples, "streamchat_generations_cost_unknown", source="none") == 0
    # Bounded labels only: no user, conversation or message id anywhere.
    labels = {v for (_, pairs) in samples for (_, v) in pairs}
    assert not any(v == "dev" or len(v) == 32 for v in labels), labels


def test_a_models_label_is_a_configured_model_or_other(start_server, fake):
    server = start_server(metrics_token=TOKEN)
    with local_client(server.url) as http:
        fake.enqueue(Behaviour(tokens=["a"], model="some/unlisted-model", cost=Decimal("0.001")))
        read_sse(http, "POST", "/api/chat", json={"message": "hi"})
        samples = scrape(http)
    assert value(samples, "streamchat_cost_usd_total", model="other", agent="chat") == 0.001
    assert not any("unlisted" in json.dumps(key) for key in samples)


def test_metrics_are_off_without_a_token_and_refuse_a_wrong_one(start_server):
    off = start_server()
    assert httpx.get(f"{off.url}/metrics", headers=SCRAPE).status_code == 404
    on = start_server(metrics_token=TOKEN)
    assert httpx.get(f"{on.url}/metrics").status_code == 401
    wrong = httpx.get(f"{on.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_token"
