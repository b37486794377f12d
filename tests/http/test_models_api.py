"""GET /api/models end to end: a real app, the fake OpenRouter's `/models` over HTTP, a real
database. Cache age, single-flight refreshes, and every fallback when the upstream is down."""

from __future__ import annotations

import concurrent.futures
import threading

from app.settings import DEFAULT_RECOMMENDED_MODELS
from app.upstream.models_catalog import BOOTSTRAP_MODELS
from tests.support import local_client, wait_for


def get_models(server, **params) -> dict:
    with local_client(server.url) as http:
        response = http.get("/api/models", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_catalog_is_fetched_once_then_served_from_the_cache(server, fake):
    assert fake.models_calls == 0  # start-up did not wait on (or call) OpenRouter

    first = get_models(server)
    assert (first["source"], first["stale"], first["refresh_error"]) == ("live", False, None)
    assert first["count"] == len(first["models"]) == 15
    assert [m["id"] for m in first["models"][:4]] == list(DEFAULT_RECOMMENDED_MODELS)
    assert all(m["recommended"] for m in first["models"][:4])
    assert not any(m["recommended"] for m in first["models"][4:])
    gpt4o = first["models"][1]
    assert gpt4o["pricing"] == {
        "input_per_million": 2.5,
        "output_per_million": 10.0,
        "known": True,
        "per_image": 0.003613,
        "cache_read_per_million": 1.25,  # it caches prompts by itself
    }
    assert gpt4o["capabilities"]["tools"] and gpt4o["capabilities"]["structured_outputs"]
    assert (gpt4o["context_length"], gpt4o["max_completion_tokens"]) == (128000, 16384)
    auto = next(m for m in first["models"] if m["id"] == "openrouter/auto")
    assert auto["pricing"]["known"] is False and auto["pricing"]["input_per_million"] is None

    second = get_models(server)
    assert (second["source"], second["stale"]) == ("cache", False)
    assert second["fetched_at"] == first["fetched_at"] and second["age_seconds"] >= 0
    assert second["models"] == first["models"]
    assert fake.models_calls == 1


def test_query_filters_and_sorting_over_http(server, fake):
    assert [m["id"] for m in get_models(server, q="mixtral")["models"]] == [
        "mistralai/mixtral-8x7b-instruct",
        "cognitivecomputations/dolphin-mixtral-8x22b",
    ]
    reasoning = get_models(server, capability="tools,reasoning")["models"]
    assert [m["id"] for m in reasoning] == ["deepseek/deepseek-r1"]
    cheap = get_models(server, max_price="0.3", sort="price")["models"]
    assert [m["id"] for m in cheap] == [
        "mistralai/mixtral-8x7b-instruct",
        "meta-llama/llama-3.1-70b-instruct",
        "meta-llama/llama-3.2-3b-instruct:free",
        "gryphe/mythomax-l2-13b",
    ]
    contexts = [m["context_length"] for m in get_models(server, sort="context")["models"][4:]]
    known = [c for c in contexts if c is not None]
    assert known == sorted(known, reverse=True)
    assert fake.models_calls == 1


def test_bad_queries_are_clear_422s(client):
    for params, fragment in [
        ({"sort": "cost"}, "`sort` must be one of price, context, name"),
        ({"capability": "tools,telepathy"}, "unknown capability telepathy"),
        ({"max_price": "cheap"}, "`max_price` must be a number"),
        ({"max_price": "-1"}, "`max_price` must be a number"),
    ]:
        response = client.get("/api/models", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "invalid_query"
        assert fragment in response.json()["error"]["message"]


def test_a_burst_of_concurrent_requests_makes_one_upstream_call(server, fake):
    fake.models_delay = 0.5  # every request of the burst arrives while the fetch is in flight
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: get_models(server), range(20)))
    assert fake.models_calls == 1
    # Those that arrived while the fetch was in flight waited for it; any later one (a slow
    # machine) got the same copy from the cache.
    assert "live" in {a["source"] for a in answers} <= {"live", "cache"}
    assert {a["fetched_at"] for a in answers} == {answers[0]["fetched_at"]}


def test_ttl_expiry_serves_the_stale_copy_while_one_refresh_runs(start_server, fake):
    # Long enough that the refreshed copy is still fresh when read back on a loaded machine.
    server = start_server(models_cache_ttl=1.0)
    first = get_models(server)
    gate = fake.models_gate = threading.Event()  # the refresh stays in flight until opened

    stale = wait_for(lambda: (a := get_models(server))["stale"] and a, what="the copy to age")
    assert stale["source"] == "cache" and stale["age_seconds"] >= 1.0  # rounded to the ms
    assert stale["fetched_at"] == first["fetched_at"]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        burst = list(pool.map(lambda _: get_models(server), range(20)))
    # Served at once from the old copy, without waiting for the refresh.
    assert {(a["source"], a["stale"], a["fetched_at"]) for a in burst} == {
        ("cache", True, first["fetched_at"])
    }
    wait_for(lambda: fake.models_calls == 2, what="the one refresh to reach the upstream")
    gate.set()

    fresh = wait_for(
        lambda: (a := get_models(server))["fetched_at"] != first["fetched_at"] and a,
        what="the refreshed copy",
    )
    assert (fresh["source"], fresh["stale"]) == ("cache", False)
    assert fake.models_calls == 2


def test_upstream_down_with_a_warm_cache_keeps_serving_it(start_server, fake):
    # Long enough that the refreshed copy is still fresh when read back on a loaded machine.
    server = start_server(models_cache_ttl=1.0)
    first = get_models(server)
    fake.models_status = 503

    wait_for(lambda: get_models(server)["stale"], what="the copy to age")
    wait_for(lambda: fake.models_calls >= 2, what="a refresh attempt")
    answer = wait_for(lambda: (a := get_models(server))["refresh_error"] and a, what="the failure")
    assert (answer["source"], answer["stale"]) == ("cache", True)
    assert answer["refresh_error"] == "simulated /models failure"
    assert answer["models"] == first["models"]

    fake.models_status = 200
    recovered = wait_for(
        lambda: not (a := get_models(server))["stale"] and a, what="a successful refresh"
    )
    assert recovered["refresh_error"] is None and recovered["fetched_at"] > first["fetched_at"]


def test_restart_with_upstream_down_serves_the_database_copy(start_server, fake, database):
    first_server = start_server()
    first = get_models(first_server)
    first_server.stop()
    [row] = database.query("SELECT source FROM model_catalog")
    assert row["source"] == "openrouter"

    fake.models_status = 503
    fake.models_calls = 0
    answer = get_models(start_server())
    assert answer["source"] == "database"
    assert answer["fetched_at"] == first["fetched_at"] and answer["stale"] is False
    assert answer["models"] == first["models"]
    assert fake.models_calls == 0  # a copy younger than the TTL needs no refresh


def test_an_old_database_copy_is_served_stale_and_refreshed(start_server, fake):
    first_server = start_server()
    first = get_models(first_server)
    first_server.stop()

    server = start_server(models_cache_ttl=0)
    answer = get_models(server)
    assert (answer["source"], answer["stale"]) == ("database", True)
    assert answer["fetched_at"] == first["fetched_at"]
    wait_for(lambda: get_models(server)["source"] == "cache", what="the refresh")
    # TTL 0: every answer is stale and may start another refresh, so at least one happened.
    assert fake.models_calls >= 2


def test_with_nothing_anywhere_the_bootstrap_list_is_served_and_marked(start_server, fake):
    fake.models_status = 503
    answer = get_models(start_server())
    assert answer["source"] == "bootstrap" and answer["stale"] is True
    assert answer["fetched_at"] is None and answer["age_seconds"] is None
    assert answer["refresh_error"] == "simulated /models failure"
    assert {m["id"] for m in answer["models"]} == {m["id"] for m in BOOTSTRAP_MODELS}
    assert not any(m["pricing"]["known"] for m in answer["models"])


def test_a_model_list_we_cannot_read_is_a_failed_refresh(start_server, fake):
    fake.models_payload = {"models": "not the shape"}
    answer = get_models(start_server())
    assert answer["source"] == "bootstrap"
    assert answer["refresh_error"] == "OpenRouter's model list has no `data` array"
