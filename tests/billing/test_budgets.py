"""Budgets, end to end on a real server: reserve before the upstream call, settle with the real
cost however the reply ends, roll over with the (injected) clock, overrides, the global cap,
unknown prices, and what a user reads of it all."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from app.billing.budgets import prompt_token_bound, worst_case
from app.dev.simulator import Behaviour
from app.upstream.models_catalog import parse_model
from tests.billing.budget_support import (
    ADMIN,
    Clock,
    finished_turn,
    probe,
    reservation,
    set_budget,
    settled,
    turn,
    usd,
)
from tests.support import generation_rows, local_client, read_sse, settled_generations, wait_for

DAY = datetime(2026, 3, 10, 9, tzinfo=UTC)


def _run_body(fake) -> dict:
    """The body the run built, as OpenRouter got it (less the client's `stream` flag)."""
    return {k: v for k, v in fake.requests[-1]["body"].items() if k != "stream"}


def _costs(database, message_id: str) -> int:
    return sum(row["cost_picousd"] or 0 for row in settled_generations(database, message_id))


def test_a_turn_reserves_its_worst_case_first_and_settles_at_its_real_cost(
    start_app, fake, database
):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(1))
    with local_client(server.url) as http:
        message_id = finished_turn(http)
        row = settled(database, message_id)
        body = _run_body(fake)
        gpt4o = parse_model(
            next(m for m in fake.models_payload["data"] if m.get("id") == "openai/gpt-4o")
        )
        assert row["reserved_picousd"] == worst_case(
            prompt_tokens=prompt_token_bound(body),
            max_tokens=body["max_tokens"],
            pricing=gpt4o.pricing,
        )
        assert row["state"] == "settled"
        assert row["amount_picousd"] == _costs(database, message_id) > 0
        assert row["day"] == "2026-03-10" and row["month"] == "2026-03"

        usage = http.get("/api/me/usage").json()
        assert usage["day"]["spent_usd"] == usd(row["amount_picousd"])
        assert usage["day"]["reserved_usd"] == 0
        assert usage["day"]["limit_usd"] == 1.0
        assert usage["day"]["resets_at"] == "2026-03-11T00:00:00+00:00"
        assert usage["month"]["resets_at"] == "2026-04-01T00:00:00+00:00"
        assert usage["live_replies"] == 0


def test_over_budget_is_402_with_the_figures_and_nothing_saved_or_sent(start_app, fake, database):
    clock = Clock(DAY)
    server = start_app(clock)
    with local_client(server.url) as http:
        worst, cost = probe(http, clock, database)
        limit = worst + cost // 2  # one turn fits, and a second one's worst case does not
        set_budget(http, daily_usd=usd(limit))
        settled(database, finished_turn(http))
        sent, saved = len(fake.requests), database.query("SELECT count(*) AS n FROM messages")

        refused = turn(http, "hi")

        assert refused.status_code == 402
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert error["scope"] == "daily"
        assert error["limit_usd"] == usd(limit)
        assert error["spent_usd"] == usd(cost)
        assert error["reserved_usd"] == 0
        assert error["resets_at"] == "2026-03-11T00:00:00+00:00"
        assert len(fake.requests) == sent
        assert database.query("SELECT count(*) AS n FROM messages") == saved


def test_day_and_month_roll_over_with_the_clock(start_app, database):
    clock = Clock(DAY)
    server = start_app(clock)
    with local_client(server.url) as http:
        worst, cost = probe(http, clock, database)
        # A day fits one turn, the month two.
        set_budget(http, daily_usd=usd(worst + cost // 2), monthly_usd=usd(worst + cost * 3 // 2))
        settled(database, finished_turn(http))
        assert turn(http).json()["error"]["scope"] == "daily"

        clock.at = datetime(2026, 3, 11, 0, 0, tzinfo=UTC)  # midnight: a new day
        settled(database, finished_turn(http))
        clock.at = datetime(2026, 3, 31, 23, 59, tzinfo=UTC)
        refused = turn(http).json()["error"]
        assert refused["scope"] == "monthly"
        assert refused["spent_usd"] == usd(2 * cost)
        assert refused["resets_at"] == "2026-04-01T00:00:00+00:00"

        clock.at = datetime(2026, 4, 1, tzinfo=UTC)  # a new month
        assert turn(http).status_code == 202


def test_an_admin_override_replaces_the_default_and_null_means_none(start_app, database):
    clock = Clock(DAY)
    server = start_app(clock, budget_user_daily_usd=Decimal("0.000001"))
    with local_client(server.url) as http:
        assert turn(http).status_code == 402  # a millionth of a dollar fits no turn
        assert http.put("/api/admin/users/dev/budget", json={}).status_code == 401
        assert http.get("/api/admin/users/dev/budget").status_code == 401

        set_budget(http, daily_usd=None)
        read = http.get("/api/admin/users/dev/budget", headers=ADMIN).json()
        assert read["override"] == {"daily_usd": None}
        assert read["effective"] == {"daily_usd": None, "monthly_usd": None}
        assert turn(http).status_code == 202

        set_budget(http)  # no fields: the server's defaults again
        assert http.get("/api/me/usage").json()["day"]["limit_usd"] == 1e-6
        bad = http.put("/api/admin/users/dev/budget", json={"daily_usd": -1}, headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_field"


def test_the_global_cap_refuses_once_the_platform_day_is_spent(start_app, database):
    clock = Clock(DAY)
    first = start_app(clock)
    with local_client(first.url) as http:
        worst, cost = probe(http, clock, database)
    first.stop()
    server = start_app(clock, budget_global_daily_usd=Decimal(worst + cost // 2) / 10**12)
    with local_client(server.url) as http:
        settled(database, finished_turn(http))
        refused = turn(http)
        assert refused.status_code == 402
        assert refused.json()["error"]["scope"] == "global"
        assert refused.json()["error"]["resets_at"] == "2026-03-11T00:00:00+00:00"


def test_fallbacks_are_reserved_at_the_dearest_model(start_app, fake, database):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(10))
    with local_client(server.url) as http:
        changed = http.put(
            "/api/catalog/agents/chat",
            json={"fallback_models": ["anthropic/claude-3.5-sonnet"]},
            headers=ADMIN,
        )
        assert changed.status_code == 200, changed.text
        fake.enqueue(Behaviour(model="anthropic/claude-3.5-sonnet"))
        message_id = finished_turn(http)
        row = settled(database, message_id)
        body = _run_body(fake)
        claude = parse_model(
            next(
                m
                for m in fake.models_payload["data"]
                if m.get("id") == "anthropic/claude-3.5-sonnet"
            )
        )
        assert row["reserved_picousd"] == worst_case(
            prompt_tokens=prompt_token_bound(body),
            max_tokens=body["max_tokens"],
            pricing=claude.pricing,
        )
        assert row["amount_picousd"] == _costs(database, message_id)


def test_a_model_without_a_known_price_cannot_be_used_under_a_budget(start_app, fake):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(1))
    with local_client(server.url) as http:
        http.put(
            "/api/catalog/agents/chat",
            json={"model": "cognitivecomputations/dolphin-mixtral-8x22b"},
            headers=ADMIN,
        )
        refused = turn(http)
        assert refused.status_code == 409
        assert refused.json()["error"] == {
            "code": "price_unknown",
            "model": "cognitivecomputations/dolphin-mixtral-8x22b",
            "message": refused.json()["error"]["message"],
        }
        assert fake.requests == []


def test_with_no_server_limit_a_turn_still_counts_and_a_users_override_alone_gates_it(
    start_app, fake, database
):
    """No server-wide limit: the reservation rides in the turn's write beside the upstream
    call, and still counts the spend; an unpriced model may be used. A user's override is the
    one limit then, and it gates their turns (and makes prices needed) at once."""
    server = start_app(Clock(DAY))
    with local_client(server.url) as http:
        first = settled(database, finished_turn(http))
        assert first["state"] == "settled" and first["amount_picousd"] > 0
        usage = http.get("/api/me/usage").json()
        assert usage["day"]["spent_usd"] == usd(first["amount_picousd"])
        assert usage["day"]["limit_usd"] is None

        unpriced = "cognitivecomputations/dolphin-mixtral-8x22b"
        http.put("/api/catalog/agents/chat", json={"model": unpriced}, headers=ADMIN)
        assert reservation(database, finished_turn(http))["reserved_picousd"] == 0
        set_budget(http, daily_usd=1)
        refused = turn(http)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "price_unknown"

        assert http.delete("/api/catalog/agents/chat", headers=ADMIN).status_code == 200
        sent = len(fake.requests)
        set_budget(http, daily_usd=0)
        refused = turn(http)
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["limit_usd"] == 0
        assert len(fake.requests) == sent
        set_budget(http, daily_usd=None)
        assert turn(http).status_code == 202


def test_a_catalog_refresh_that_loses_a_price_keeps_the_last_known_one(start_app, fake):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(1), models_cache_ttl=0)
    with local_client(server.url) as http:
        assert turn(http).status_code == 202  # priced from the first copy
        for model in fake.models_payload["data"]:
            if model.get("id") == "openai/gpt-4o":
                model["pricing"] = {}

        def refreshed() -> bool:
            models = http.get("/api/models", params={"q": "gpt-4o"}).json()["models"]
            return any(m["id"] == "openai/gpt-4o" and not m["pricing"]["known"] for m in models)

        wait_for(refreshed, what="a catalog copy without gpt-4o's price")
        assert turn(http).status_code == 202


def test_an_upstream_refusal_releases_the_reservation(start_app, fake, database):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(1))
    with local_client(server.url) as http:
        fake.enqueue(Behaviour(status=400))
        message_id = finished_turn(http)
        row = settled(database, message_id)
        assert [g["cost_source"] for g in generation_rows(database, message_id)] == ["not_billed"]
        assert (row["state"], row["amount_picousd"]) == ("settled", 0)


def test_a_retried_turn_settles_at_the_sum_of_its_attempts(start_app, fake, database):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(1))
    with local_client(server.url) as http:
        fake.enqueue(Behaviour(status=503))
        message_id = finished_turn(http)
        row = settled(database, message_id)
        sources = [g["cost_source"] for g in settled_generations(database, message_id)]
        assert sources == ["not_billed", "usage"]
        assert row["amount_picousd"] == _costs(database, message_id) > 0


def test_a_stopped_reply_settles_from_its_generation_record(start_app, fake, database):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(1))
    with local_client(server.url) as http:
        fake.enqueue(Behaviour(tokens=["a", "b", "c"], stall_after=1))
        response = turn(http)
        message_id = response.json()["message_id"]
        assert reservation(database, message_id)["state"] == "held"
        assert http.get("/api/me/usage").json()["live_replies"] == 1
        wait_for(lambda: generation_rows(database, message_id), what="the generation row")
        assert http.post(f"/api/messages/{message_id}/stop").status_code == 202
        row = settled(database, message_id)
        [generation] = settled_generations(database, message_id)
        assert generation["cost_source"] == "generation"
        assert (row["state"], row["amount_picousd"]) == ("settled", generation["cost_picousd"])


def test_a_reply_whose_cost_stays_unknown_keeps_its_reservation_as_spent(start_app, fake, database):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(1), generation_lookup_timeout=0.2)
    with local_client(server.url) as http:
        fake.enqueue(Behaviour(tokens=["a", "b", "c"], stall_after=1))
        fake.generation_404s = 1000  # the generation record never answers
        message_id = turn(http).json()["message_id"]
        wait_for(lambda: generation_rows(database, message_id), what="the generation row")
        http.post(f"/api/messages/{message_id}/stop")
        row = settled(database, message_id)
        assert [g["cost_source"] for g in generation_rows(database, message_id)] == ["none"]
        assert (row["state"], row["amount_picousd"]) == ("kept", row["reserved_picousd"])
        usage = http.get("/api/me/usage").json()["day"]
        assert usage["unknown_cost_usd"] == usage["spent_usd"] == usd(row["reserved_picousd"])


def test_a_client_that_leaves_under_cancel_settles_its_interrupted_reply(start_app, fake, database):
    server = start_app(
        Clock(DAY),
        budget_user_daily_usd=Decimal(1),
        disconnect_policy="cancel",
        disconnect_cancel_delay=0,
    )
    with local_client(server.url) as http:
        fake.enqueue(Behaviour(tokens=["a", "b", "c"], stall_after=1))
        with http.stream("POST", "/api/chat", json={"message": "hi"}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event: delta"):
                    break
        message_id = wait_for(
            lambda: database.query("SELECT id FROM budget_reservations"), what="the reservation"
        )[0]["id"]
        row = settled(database, message_id)
        assert database.query("SELECT status FROM messages WHERE id = :id", id=message_id) == [
            {"status": "interrupted"}
        ]
        assert row["amount_picousd"] == _costs(database, message_id)


def test_streams_and_reads_are_not_turns(start_app, database):
    server = start_app(Clock(DAY), limit_user_rpm=1)
    with local_client(server.url) as http:
        response = turn(http)
        message_id = response.json()["message_id"]
        for _ in range(3):
            read_sse(http, "GET", response.json()["stream_url"])
            assert http.get("/api/me/usage").status_code == 200
            assert http.get(f"/api/messages/{message_id}/stream").status_code in (200, 204)
        assert turn(http).status_code == 429


def test_budgets_at_their_largest_never_overflow_the_databases_integers(start_app, fake, database):
    # Amounts are 64-bit pico-dollars: the largest budget a setting allows, a turn whose worst
    # case is beyond any budget (a model at an absurd price), and the sums the reservation's
    # check makes of them must all stay storable. The turn is refused, not a 500.
    for model in fake.models_payload["data"]:
        if model.get("id") == "openai/gpt-4o":
            model["pricing"] = {**model["pricing"], "prompt": "1000000", "completion": "1000000"}
    largest = Decimal(1_000_000)
    server = start_app(
        Clock(DAY),
        budget_user_daily_usd=largest,
        budget_user_monthly_usd=largest,
        budget_global_daily_usd=largest,
    )
    with local_client(server.url) as http:
        refused = turn(http)
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert fake.requests == []
