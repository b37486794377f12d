"""Budgets price the model a turn chose (and its fallbacks), exactly as they price the agent's
default; the model list says which models the caller's budgets cover."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from app.billing.budgets import prompt_token_bound, worst_case
from app.dev.simulator_models import simulated_models
from app.upstream.models_catalog import parse_model
from tests.billing.budget_support import Clock, reservation, set_budget, turn
from tests.http.test_model_choice import CLAUDE, GPT4O, MINI, UNPRICED, write_agents
from tests.support import local_client, read_sse

DAY = datetime(2026, 3, 10, 9, tzinfo=UTC)
PRICES = {m.id: m.pricing for m in map(parse_model, simulated_models()["data"]) if m}


def started(start_app, tmp_path, **settings):
    allowed = f'["{MINI}", "{CLAUDE}", "{UNPRICED}"]'
    return start_app(
        Clock(DAY),
        agents_file=write_agents(tmp_path, allowed, chat=f'fallback_models = ["{MINI}"]'),
        **settings,
    )


def test_the_reservation_prices_the_chosen_model_and_its_fallbacks(
    start_app, tmp_path, fake, database
):
    server = started(start_app, tmp_path, budget_user_daily_usd=Decimal(5))
    with local_client(server.url) as http:
        for model in (MINI, CLAUDE, None):
            response = turn(http, "price me", **({"model": model} if model else {}))
            assert response.status_code == 202, response.text
            read_sse(http, "GET", response.json()["stream_url"])
            # As the run built it: the client adds `"stream": true` on the wire.
            sent = {k: v for k, v in fake.requests[-1]["body"].items() if k != "stream"}
            chosen = model or GPT4O
            assert sent["model"] == chosen
            # The dearest of the model and its fallbacks (MINI, unless it is the model).
            expected = max(
                worst_case(
                    prompt_tokens=prompt_token_bound(sent),
                    max_tokens=sent["max_tokens"],
                    pricing=PRICES[m],
                )
                for m in {chosen, MINI}
            )
            row = reservation(database, response.json()["message_id"])
            assert row["reserved_picousd"] == expected, model


def test_a_budget_refuses_a_dear_model_and_admits_a_cheap_one(start_app, tmp_path, fake, database):
    server = started(start_app, tmp_path, budget_user_daily_usd=Decimal("0.005"))
    with local_client(server.url) as http:
        refused = turn(http, "hello", model=CLAUDE)
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["code"] == "budget_exceeded"
        unknown = turn(http, "hello", model=UNPRICED)
        assert unknown.status_code == 409, unknown.text
        assert unknown.json()["error"]["code"] == "price_unknown"
        assert unknown.json()["error"]["model"] == UNPRICED
        assert fake.requests == [] and database.query("SELECT id FROM messages") == []
        admitted = turn(http, "hello", model=MINI)
        assert admitted.status_code == 202, admitted.text


def test_the_model_list_says_which_models_the_budget_covers(start_app, tmp_path, fake):
    server = started(start_app, tmp_path, budget_user_daily_usd=Decimal("0.05"))
    with local_client(server.url) as http:
        body = http.get("/api/agents/chat/models").json()
        assert body["budgeted"] is True
        models = {m["id"]: m for m in body["models"]}
        # The largest turn on MINI costs at most ~$0.02: covered.
        assert models[MINI]["affordable"] and models[MINI]["over_budget"] is None
        # On Claude up to ~$0.60 (a 200k window): not, and the daily budget is why.
        claude = models[CLAUDE]
        assert claude["affordable"] is False
        assert claude["worst_case_usd"] > 0.05
        assert claude["over_budget"] == {
            "reason": "budget",
            "scope": "daily",
            "limit_usd": 0.05,
            "left_usd": 0.05,
        }
        assert models[UNPRICED]["over_budget"] == {"reason": "price_unknown"}
        set_budget(http, daily_usd=1)
        body = http.get("/api/agents/chat/models").json()
        assert all(m["affordable"] for m in body["models"] if m["id"] != UNPRICED)
