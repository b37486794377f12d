"""A user's choice of model, within what the operator allows, on every route that starts a
reply: refused before anything is written or sent, remembered per conversation, listed with
prices (GET /api/agents/{agent}/models)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.billing.budgets import prompt_token_bound
from app.dev.simulator import context_error
from tests.support import local_client, read_sse

GPT4O = "openai/gpt-4o"
MINI = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-3.5-sonnet"
R1 = "deepseek/deepseek-r1"
SMALL = "gryphe/mythomax-l2-13b"
UNPRICED = "thedrummer/rocinante-12b"
ALLOWED = [MINI, R1, SMALL, UNPRICED]


def write_agents(tmp_path: Path, allowed: str, *, chat: str = "", coach: str = "") -> str:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[chat]
model = "{GPT4O}"
allowed_models = {allowed}
max_tokens = 512
system_prompt = "Be brief."
{chat}

[coach]
model = "{GPT4O}"
allowed_models = {allowed}
max_tokens = 256
system_prompt = "Coach kindly."
{coach}
""",
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture
def chooser(start_server, tmp_path):
    server = start_server(agents_file=write_agents(tmp_path, str(ALLOWED).replace("'", '"')))
    with local_client(server.url) as http:
        yield http


def rows(database) -> dict[str, int]:
    [row] = database.query(
        "SELECT (SELECT COUNT(*) FROM messages) AS messages,"
        " (SELECT COUNT(*) FROM conversations) AS conversations"
    )
    return row


def two_step(http: httpx.Client, path: str, body: dict) -> dict:
    response = http.post(path, json=body)
    assert response.status_code == 202, response.text
    events = read_sse(http, "GET", response.json()["stream_url"])
    assert events[-1].event == "done", events[-1]
    return {**response.json(), "events": events}


def upstream_model(fake) -> str:
    return fake.requests[-1]["body"]["model"]


def test_every_route_that_starts_a_reply_refuses_a_model_not_allowed(chooser, fake, database):
    first = two_step(chooser, "/api/chat/messages", {"message": "hello"})
    conversation, reply = first["conversation_id"], first["message_id"]
    asked = first["user_message_id"]
    before, sent = rows(database), len(fake.requests)
    attempts = [
        ("POST", "/api/chat", {"json": {"message": "hi", "model": CLAUDE}}),
        (
            "POST",
            "/api/chat",
            {"json": {"message": "hi", "model": CLAUDE, "conversation_id": conversation}},
        ),
        ("GET", "/api/chat/stream", {"params": {"message": "hi", "model": CLAUDE}}),
        ("POST", "/api/chat/messages", {"json": {"message": "hi", "model": CLAUDE}}),
        ("POST", "/api/coach", {"json": {"question": "hi", "model": CLAUDE}}),
        ("GET", "/api/coach/stream", {"params": {"question": "hi", "model": CLAUDE}}),
        ("POST", "/api/coach/messages", {"json": {"question": "hi", "model": CLAUDE}}),
        ("POST", f"/api/messages/{reply}/regenerate", {"json": {"model": CLAUDE}}),
        ("POST", f"/api/messages/{asked}/edit", {"json": {"message": "hi", "model": CLAUDE}}),
        (
            "POST",
            "/api/chat/messages",
            {"headers": {"Idempotency-Key": "k1"}, "json": {"message": "hi", "model": CLAUDE}},
        ),
    ]
    for method, path, kwargs in attempts:
        response = chooser.request(method, path, **kwargs)
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "model_not_allowed" and error["model"] == CLAUDE, path
    for method, path, kwargs in attempts[:3]:
        body = kwargs.get("json") or kwargs.get("params")
        response = chooser.request(
            method, path, **{k: {**body, "model": "acme/imaginary-1"} for k in kwargs}
        )
        assert response.json()["error"]["code"] == "unknown_model", path
    assert rows(database) == before and len(fake.requests) == sent
    assert database.query("SELECT COUNT(*) AS n FROM idempotency_keys") == [{"n": 0}]


def test_a_conversation_remembers_its_model_and_can_switch(chooser, fake, database):
    first = two_step(chooser, "/api/chat/messages", {"message": "one", "model": MINI})
    conversation = first["conversation_id"]
    assert upstream_model(fake) == MINI
    assert first["events"][0].data["model"] == MINI
    # The next turn, without a model: the conversation's.
    two_step(chooser, "/api/chat/messages", {"message": "two", "conversation_id": conversation})
    assert upstream_model(fake) == MINI
    shown = chooser.get(f"/api/conversations/{conversation}").json()
    assert shown["model"] == MINI
    assert [m["model"] for m in shown["messages"] if m["role"] == "assistant"] == [MINI, MINI]
    # Switched mid-conversation, one-step: remembered from then on.
    events = read_sse(
        chooser,
        "POST",
        "/api/chat",
        json={"message": "three", "conversation_id": conversation, "model": SMALL},
    )
    assert events[0].data["model"] == SMALL and upstream_model(fake) == SMALL
    listed = chooser.get("/api/conversations").json()["conversations"]
    assert [(c["id"], c["model"]) for c in listed] == [(conversation, SMALL)]
    # A new conversation starts on the agent's default.
    two_step(chooser, "/api/chat/messages", {"message": "new"})
    assert upstream_model(fake) == GPT4O


def test_regenerate_with_another_model(chooser, fake):
    first = two_step(chooser, "/api/chat/messages", {"message": "one", "model": MINI})
    again = two_step(chooser, f"/api/messages/{first['message_id']}/regenerate", {"model": R1})
    assert upstream_model(fake) == R1 and again["events"][0].data["model"] == R1
    conversation = chooser.get(f"/api/conversations/{first['conversation_id']}").json()
    assert conversation["model"] == R1
    assert conversation["messages"][-1]["model"] == R1
    # Regenerated without a body: the conversation's model (now R1).
    response = chooser.post(f"/api/messages/{again['message_id']}/regenerate")
    assert response.status_code == 202
    read_sse(chooser, "GET", response.json()["stream_url"])
    assert upstream_model(fake) == R1


def test_edit_and_coach_take_a_model(chooser, fake):
    first = two_step(chooser, "/api/chat/messages", {"message": "one"})
    two_step(
        chooser,
        f"/api/messages/{first['user_message_id']}/edit",
        {"message": "one, said otherwise", "model": SMALL},
    )
    assert upstream_model(fake) == SMALL
    events = read_sse(
        chooser,
        "GET",
        "/api/coach/stream",
        params={"question": "how?", "model": MINI, "conversation_id": first["conversation_id"]},
    )
    assert events[-1].event == "done" and upstream_model(fake) == MINI


def test_reasoning_effort_per_turn(chooser, fake):
    two_step(
        chooser,
        "/api/chat/messages",
        {"message": "think", "model": R1, "reasoning": {"effort": "high"}},
    )
    assert fake.requests[-1]["body"]["reasoning"] == {"effort": "high"}
    refused = chooser.post(
        "/api/chat/messages", json={"message": "think", "reasoning": {"effort": "high"}}
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "reasoning_not_supported"
    bad = chooser.post("/api/chat/messages", json={"message": "x", "reasoning": {"effort": "max"}})
    assert bad.json()["error"]["code"] == "invalid_field"


def test_what_goes_upstream_says_no_middle_out(chooser, fake):
    two_step(chooser, "/api/chat/messages", {"message": "hello"})
    assert fake.requests[-1]["body"]["transforms"] == []


def test_the_models_a_caller_may_choose(chooser, fake):
    listed = chooser.get("/api/agents/chat/models")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["default_model"] == GPT4O and body["budgeted"] is False
    models = {m["id"]: m for m in body["models"]}
    assert set(models) == {GPT4O, *ALLOWED}
    # Recommended first, in RECOMMENDED_MODELS' order; then by name.
    assert [m["id"] for m in body["models"]][:1] == [GPT4O]
    assert [m["recommended"] for m in body["models"]] == [True] + [False] * len(ALLOWED)
    gpt = models[GPT4O]
    assert gpt["default"] and gpt["available"] and gpt["affordable"]
    assert gpt["pricing"]["input_per_million"] == 2.5
    assert gpt["pricing"]["output_per_million"] == 10.0
    assert gpt["context_length"] == 128000 and gpt["max_tokens"] == 512
    assert gpt["capabilities"]["image_input"] and not gpt["capabilities"]["reasoning"]
    # The largest turn its window lets through, priced as the budget would.
    assert gpt["worst_case_usd"] == pytest.approx((128000 - 512) * 2.5e-6 + 512 * 10e-6)
    assert models[R1]["capabilities"]["reasoning"] and not models[R1]["default"]
    assert models[SMALL]["context_length"] == 4096
    assert models[UNPRICED]["worst_case_usd"] is None and models[UNPRICED]["affordable"]
    assert chooser.get("/api/agents/nobody/models").status_code == 404


def test_a_listed_model_that_left_the_catalog_is_shown_with_a_warning_and_refused(chooser, fake):
    fake.models_payload["data"] = [m for m in fake.models_payload["data"] if m.get("id") != MINI]
    models = {m["id"]: m for m in chooser.get("/api/agents/chat/models").json()["models"]}
    assert not models[MINI]["available"] and "not in OpenRouter" in models[MINI]["warning"]
    refused = chooser.post("/api/chat/messages", json={"message": "hi", "model": MINI})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_model"
    assert fake.requests == []


def test_an_upstream_context_length_error_has_its_own_code(chooser, fake, database):
    fake.enqueue(context_error(4096, 5000, 4000, 1000))
    response = chooser.post("/api/chat/messages", json={"message": "hi"})
    events = read_sse(chooser, "GET", response.json()["stream_url"])
    assert events[-1].event == "error"
    assert events[-1].data["code"] == "context_length_exceeded"
    assert events[-1].data["retryable"] is False
    generations = database.query(
        "SELECT cost_source, cost_picousd FROM generations WHERE message_id = :id",
        id=response.json()["message_id"],
    )
    assert generations == [{"cost_source": "not_billed", "cost_picousd": 0}]
    assert len(fake.requests) == 1  # not asked again


def test_a_200_turn_conversation_of_long_messages_on_a_4k_model_never_fails(
    start_server, tmp_path, fake
):
    # Enough history allowed by count that only the window limits it.
    agents = write_agents(tmp_path, f'["{SMALL}"]', chat="history_messages = 1000")
    server = start_server(agents_file=agents)
    notes = []
    with local_client(server.url) as http:
        conversation = None
        for turn in range(200):
            message = f"turn {turn}: " + " ".join(f"word{turn}x{i}" for i in range(80))
            body = {"message": message, "model": SMALL}
            if conversation:
                body["conversation_id"] = conversation
            response = http.post("/api/chat/messages", json=body)
            assert response.status_code == 202, (turn, response.text)
            conversation = response.json()["conversation_id"]
            events = read_sse(http, "GET", response.json()["stream_url"])
            assert events[-1].event == "done", (turn, events[-1].data)
            sent = fake.requests[-1]["body"]
            assert sent["model"] == SMALL and sent["messages"][-1]["content"] == message
            # What was sent fits the window by the budget's own bound (and so by any tokenizer).
            assert prompt_token_bound(sent) + sent["max_tokens"] <= 4096, turn
            history = sent["messages"][1:-1]
            assert history == [] or history[0]["role"] == "user"
            notes.append(events[0].data.get("history"))
        # Kept with the reply: the conversation and a replay from the database say it too.
        shown = http.get(f"/api/conversations/{conversation}").json()["messages"]
        assert shown[-1]["history"] == notes[-1] and shown[1]["history"] is None
        replayed = read_sse(http, "GET", response.json()["stream_url"])
        assert replayed[0].data["history"] == notes[-1]
    # Early turns send everything; later ones leave the oldest out, and say so.
    assert notes[0] is None and notes[1] is None
    late = notes[-1]
    assert late is not None and late["sent"] >= 1 and late["left_out"] > 0
    # Read only as far back as the window: never the whole conversation (1,000 messages).
    assert late["sent"] + late["left_out"] < 20
