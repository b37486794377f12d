"""Re-pointing agents at run time: admin-only, validated against the model catalog, persisted,
and used by the next reply (checked in the request the fake OpenRouter received)."""

from __future__ import annotations

import threading

import pytest

from app.agents.config import load_agents
from app.agents.overrides import AgentOverride, parse_override
from app.dev.simulator import Behaviour
from app.errors import ApiError
from app.settings import ConfigError
from tests.support import local_client, read_sse, wait_for

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CLAUDE = "anthropic/claude-3.5-sonnet"


@pytest.fixture
def admin_server(start_server):
    return start_server(admin_token=TOKEN)


@pytest.fixture
def admin(admin_server):
    with local_client(admin_server.url) as http:
        yield http


def test_writes_are_refused_without_a_configured_admin_token(client):
    for method in ("PUT", "DELETE"):
        response = client.request(
            method, "/api/catalog/agents/chat", json={"temperature": 1}, headers=ADMIN
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "admin_disabled"
        assert "ADMIN_TOKEN" in response.json()["error"]["message"]


def test_a_missing_or_wrong_token_is_401_and_never_echoed(admin):
    wrong = (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic x"},
    )
    for headers in wrong:
        response = admin.put("/api/catalog/agents/chat", json={"temperature": 1}, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "unauthorized"
        assert TOKEN not in response.text
    assert admin.get("/api/catalog").json()["agents"]["chat"]["source"] == "file"


INVALID_CHANGES = [
    ({"model": "acme/imaginary-1"}, 422, "unknown_model", "acme/imaginary-1 is not in"),
    ({"fallback_models": [CLAUDE, "acme/nope"]}, 422, "unknown_model", "acme/nope"),
    ({"model": "gpt-4o"}, 422, "invalid_field", "must be an OpenRouter model id"),
    ({"temperature": 2.5}, 422, "invalid_field", "from 0 to 2"),
    ({"temperature": True}, 422, "invalid_field", "from 0 to 2"),
    ({"max_tokens": 0}, 422, "invalid_field", "at least 1"),
    ({"max_tokens": 1.5}, 422, "invalid_field", "whole number"),
    ({"model": CLAUDE, "max_tokens": 9000}, 422, "max_tokens_too_large", "limit of 8192"),
    (
        {"model": "meta-llama/llama-3.2-3b-instruct:free", "max_tokens": 5000},
        422,
        "max_tokens_too_large",
        "limit of 4096",
    ),
    ({"temprature": 1}, 422, "invalid_field", "unknown field(s) temprature"),
    ({}, 422, "invalid_field", "give at least one of"),
]


def test_changes_are_validated_against_the_catalog(admin):
    for body, status, code, fragment in INVALID_CHANGES:
        response = admin.put("/api/catalog/agents/chat", json=body, headers=ADMIN)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code, body
        assert fragment in response.json()["error"]["message"], body
    assert admin.get("/api/catalog").json()["agents"]["chat"]["source"] == "file"


def test_the_file_max_tokens_is_checked_against_a_new_model(admin, fake):
    small = next(m for m in fake.models_payload["data"] if m.get("id") == CLAUDE)
    small["top_provider"]["max_completion_tokens"] = 600
    # Only the model changes: the file's max_tokens (chat 1024, coach 512) must fit it.
    refused = admin.put("/api/catalog/agents/chat", json={"model": CLAUDE}, headers=ADMIN)
    assert refused.status_code == 422
    assert refused.json()["error"]["message"] == (
        f"max_tokens 1024 (from the agents file) is above {CLAUDE}'s limit of 600; "
        "send a smaller max_tokens"
    )
    ok = admin.put("/api/catalog/agents/coach", json={"model": CLAUDE}, headers=ADMIN)
    assert ok.status_code == 200 and ok.json()["max_tokens"] == 512


def test_unknown_agent_is_404(admin):
    response = admin.put("/api/catalog/agents/poet", json={"temperature": 1}, headers=ADMIN)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_agent"


def test_change_is_used_by_the_next_reply_survives_a_restart_and_resets(
    start_server, fake, database
):
    first = start_server(admin_token=TOKEN)
    with local_client(first.url) as http:
        change = {
            "model": CLAUDE,
            "fallback_models": ["openai/gpt-4o-mini"],
            "temperature": 0.2,
            "max_tokens": 4000,
        }
        response = http.put("/api/catalog/agents/chat", json=change, headers=ADMIN)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["source"] == "override" and body["warnings"] == []
        assert (body["model"], body["temperature"], body["max_tokens"]) == (CLAUDE, 0.2, 4000)
        assert body["file_default"]["model"] == "openai/gpt-4o"

        read_sse(http, "POST", "/api/chat", json={"message": "after the change"})
    sent = fake.requests[-1]["body"]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == (CLAUDE, 0.2, 4000)
    assert sent["models"] == [CLAUDE, "openai/gpt-4o-mini"]
    [reply] = database.query(
        "SELECT requested_model, temperature FROM messages WHERE role = 'assistant'"
    )
    assert reply == {"requested_model": CLAUDE, "temperature": 0.2}
    [row] = database.query("SELECT agent, model, max_tokens FROM agent_overrides")
    assert row == {"agent": "chat", "model": CLAUDE, "max_tokens": 4000}
    first.stop()

    second = start_server(admin_token=TOKEN)
    with local_client(second.url) as http:
        chat = http.get("/api/catalog").json()["agents"]["chat"]
        assert (chat["source"], chat["model"], chat["temperature"]) == ("override", CLAUDE, 0.2)
        read_sse(http, "POST", "/api/chat", json={"message": "after the restart"})
        assert fake.requests[-1]["body"]["model"] == CLAUDE
        assert fake.requests[-1]["body"]["max_tokens"] == 4000
        # The coach was never changed: still the file's.
        coach = http.get("/api/catalog").json()["agents"]["coach"]
        assert (coach["source"], coach["temperature"]) == ("file", 0.3)

        reset = http.delete("/api/catalog/agents/chat", headers=ADMIN)
        assert reset.status_code == 200
        assert (reset.json()["reset"], reset.json()["source"]) == (True, "file")
        assert http.delete("/api/catalog/agents/chat", headers=ADMIN).json()["reset"] is False
        read_sse(http, "POST", "/api/chat", json={"message": "back to the file"})
    sent = fake.requests[-1]["body"]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("openai/gpt-4o", 0.7, 1024)
    assert "models" not in sent
    assert database.query("SELECT * FROM agent_overrides") == []


def test_a_put_replaces_the_whole_override(admin):
    admin.put("/api/catalog/agents/chat", json={"model": CLAUDE, "temperature": 0.1}, headers=ADMIN)
    body = admin.put("/api/catalog/agents/chat", json={"temperature": 1.5}, headers=ADMIN).json()
    # The model is no longer overridden: it follows the file again.
    assert (body["model"], body["temperature"]) == ("openai/gpt-4o", 1.5)
    assert body["override"]["model"] is None


def test_a_reply_in_flight_keeps_its_config_even_when_it_retries(admin_server, admin, fake):
    admin.get("/api/models")  # warm the catalog so the change below is quick
    # The first attempt fails (slowly) and is retried: the retry must not pick up the change.
    fake.enqueue(Behaviour(status=503, headers_delay=1.0), Behaviour(tokens=["ok"]))
    events: list = []
    reader = threading.Thread(
        target=lambda: events.extend(read_sse(admin, "POST", "/api/chat", json={"message": "hi"}))
    )
    reader.start()
    wait_for(lambda: len(fake.requests) == 1, what="the first attempt")
    changed = admin.put(
        "/api/catalog/agents/chat", json={"model": CLAUDE, "temperature": 1.9}, headers=ADMIN
    )
    assert changed.status_code == 200
    assert len(fake.requests) == 1, "the change must land while the first attempt is in flight"
    reader.join(timeout=10)
    assert events[-1].event == "done"
    first_attempt, retry = (r["body"] for r in fake.requests)
    assert (
        (retry["model"], retry["temperature"])
        == ("openai/gpt-4o", 0.7)
        == (
            first_attempt["model"],
            first_attempt["temperature"],
        )
    )
    read_sse(admin, "POST", "/api/chat", json={"message": "next"})
    assert (fake.requests[-1]["body"]["model"], fake.requests[-1]["body"]["temperature"]) == (
        CLAUDE,
        1.9,
    )


def test_with_the_catalog_unavailable_a_change_is_accepted_with_a_warning(admin, fake):
    fake.models_status = 503
    response = admin.put(
        "/api/catalog/agents/chat", json={"model": "acme/brand-new-model"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    [warning] = response.json()["warnings"]
    assert "model catalog is unavailable" in warning and "acme/brand-new-model" in warning
    read_sse(admin, "POST", "/api/chat", json={"message": "hi"})
    assert fake.requests[-1]["body"]["model"] == "acme/brand-new-model"


def test_catalog_shows_each_agents_model_prices_and_capabilities(client):
    catalog = client.get("/api/catalog").json()
    assert catalog["models_catalog"]["source"] == "live"
    chat = catalog["agents"]["chat"]
    assert chat["warnings"] == [] and chat["source"] == "file" and chat["override"] is None
    info = chat["model_info"]
    assert info["pricing"]["input_per_million"] == 2.5
    assert info["pricing"]["output_per_million"] == 10.0
    assert info["capabilities"]["tools"] is True and info["context_length"] == 128000


def test_catalog_warns_when_an_agents_model_is_not_in_the_catalog(start_server):
    server = start_server(openrouter_model="acme/not-listed")
    with local_client(server.url) as http:
        chat = http.get("/api/catalog").json()["agents"]["chat"]
    assert chat["model"] == "acme/not-listed" and chat["model_info"] is None
    assert chat["warnings"] == ["acme/not-listed is not in OpenRouter's model catalog"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"fallback_models": "openai/gpt-4o"}, "`fallback_models` must be a list of model ids"),
        ({"fallback_models": {"openai/gpt-4o": 1}}, "`fallback_models` must be a list"),
        ({"fallback_models": [CLAUDE, 3]}, "`fallback_models[]` must be an OpenRouter model id"),
        ({"model": 5}, "`model` must be an OpenRouter model id"),
        ({"temperature": float("inf")}, "`temperature` must be a number from 0 to 2"),
        ({"temperature": "1"}, "`temperature` must be a number from 0 to 2"),
        ({"max_tokens": "5"}, "`max_tokens` must be a whole number of at least 1"),
        ({"max_tokens": True}, "`max_tokens` must be a whole number of at least 1"),
        ({"updated_at": "2026-01-01", "model": CLAUDE}, "unknown field(s) updated_at; allowed:"),
        # Field order decides which fault is told when there are several.
        ({"max_tokens": 0, "model": "gpt-4o"}, "`model` must be an OpenRouter model id"),
    ],
)
def test_a_put_body_s_faults_are_told_field_by_field(body, message):
    with pytest.raises(ApiError) as raised:
        parse_override(body)
    assert (raised.value.status, raised.value.code) == (422, "invalid_field")
    assert message in raised.value.message


def test_a_put_body_is_trimmed_and_null_means_as_in_the_file():
    assert parse_override({"model": f" {CLAUDE} ", "temperature": 1}) == AgentOverride(
        model=CLAUDE, temperature=1.0
    )
    assert parse_override({"max_tokens": None}) == AgentOverride()


# --- reasoning ----------------------------------------------------------------------------------

R1 = "deepseek/deepseek-r1"  # its `supported_parameters` name "reasoning"; gpt-4o's do not


@pytest.mark.parametrize(
    ("reasoning", "fragment"),
    [
        ({"effort": "extreme"}, "`effort` (none, minimal, low, medium, high or xhigh)"),
        ({"effort": "high", "max_tokens": 100}, "not both"),
        ({"max_tokens": 0}, "`max_tokens` (a whole number of at least 1)"),
        ({"max_tokens": "100"}, "`max_tokens` (a whole number of at least 1)"),
        ({"exclude": "yes"}, "`exclude` (true or false)"),
        ({"budget": 3}, "`reasoning` takes"),
        ("high", "`reasoning` must be an object"),
    ],
)
def test_reasoning_settings_are_validated(reasoning, fragment):
    with pytest.raises(ApiError) as raised:
        parse_override({"reasoning": reasoning})
    assert (raised.value.status, raised.value.code) == (422, "invalid_field")
    assert fragment in raised.value.message


def test_reasoning_is_checked_against_the_models_supported_parameters(admin, fake):
    refused = admin.put(
        "/api/catalog/agents/chat", json={"reasoning": {"effort": "high"}}, headers=ADMIN
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "reasoning_not_supported"
    assert "openai/gpt-4o does not take `reasoning`" in refused.json()["error"]["message"]
    # Turning reasoning off asks nothing a model could refuse.
    off = admin.put(
        "/api/catalog/agents/chat", json={"reasoning": {"effort": "none"}}, headers=ADMIN
    )
    assert off.status_code == 200, off.text

    change = {"model": R1, "reasoning": {"effort": "xhigh", "exclude": True}}
    response = admin.put("/api/catalog/agents/chat", json=change, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["reasoning"] == {"effort": "xhigh", "exclude": True}
    chat = admin.get("/api/catalog").json()["agents"]["chat"]
    assert chat["reasoning"] == {"effort": "xhigh", "exclude": True}
    assert chat["override"]["reasoning"] == {"effort": "xhigh", "exclude": True}
    assert chat["file_default"]["reasoning"] is None
    read_sse(admin, "POST", "/api/chat", json={"message": "think"})
    assert fake.requests[-1]["body"]["reasoning"] == {"effort": "xhigh", "exclude": True}


def test_catalog_warns_when_the_files_reasoning_meets_a_model_without_it(start_server, tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text(
        "[chat]\nsystem_prompt = 'x'\nreasoning = {max_tokens = 2000}\n"
        "[coach]\nsystem_prompt = 'y'\n"
    )
    server = start_server(agents_file=str(agents))
    with local_client(server.url) as http:
        chat = http.get("/api/catalog").json()["agents"]["chat"]
    assert chat["reasoning"] == {"max_tokens": 2000}
    assert "openai/gpt-4o does not take `reasoning`: the setting is not applied" in chat["warnings"]


def test_a_bad_reasoning_effort_in_the_agents_file_stops_the_start(tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text(
        "[chat]\nsystem_prompt = 'x'\nreasoning = {effort = 'max'}\n[coach]\nsystem_prompt = 'y'\n"
    )
    with pytest.raises(ConfigError, match=r"agent 'chat', field 'reasoning\.effort'"):
        load_agents(agents)


def test_allowed_models_are_set_at_run_time_and_checked_against_the_catalog(admin, fake):
    def put(body):
        return admin.put("/api/catalog/agents/chat", json=body, headers=ADMIN)

    unknown = put({"allowed_models": ["openai/gpt-4o-mini", "acme/nope"]})
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_model"
    assert "acme/nope" in unknown.json()["error"]["message"]
    for bad in ("everything", ["gpt-4o"], 3):
        refused = put({"allowed_models": bad})
        assert refused.status_code == 422, bad
        assert refused.json()["error"]["code"] == "invalid_field"
        assert "allowed_models" in refused.json()["error"]["message"]

    def chosen(model):
        return admin.post("/api/chat/messages", json={"message": "hi", "model": model})

    assert chosen(CLAUDE).json()["error"]["code"] == "model_not_allowed"
    saved = put({"allowed_models": "*"})
    assert saved.status_code == 200, saved.text
    assert saved.json()["allowed_models"] == "*"
    assert admin.get("/api/catalog").json()["agents"]["chat"]["allowed_models"] == "*"
    accepted = chosen(CLAUDE)
    assert accepted.status_code == 202, accepted.text
    read_sse(admin, "GET", accepted.json()["stream_url"])
    assert fake.requests[-1]["body"]["model"] == CLAUDE
    listed = [m["id"] for m in admin.get("/api/agents/chat/models").json()["models"]]
    assert CLAUDE in listed and "openrouter/auto" not in listed  # priced models only
    put({"allowed_models": [CLAUDE]})
    assert admin.get("/api/catalog").json()["agents"]["chat"]["allowed_models"] == [CLAUDE]
    admin.delete("/api/catalog/agents/chat", headers=ADMIN)
    assert chosen(CLAUDE).json()["error"]["code"] == "model_not_allowed"


def test_allowed_models_in_the_agents_file(tmp_path):
    agents = tmp_path / "agents.toml"
    base = '[coach]\nsystem_prompt = "c"\n[chat]\nsystem_prompt = "s"\n'
    agents.write_text(base + 'allowed_models = "*"\n', encoding="utf-8")
    assert load_agents(agents)["chat"].allowed_models == "*"
    agents.write_text(base + f'allowed_models = ["{CLAUDE}"]\n', encoding="utf-8")
    assert load_agents(agents)["chat"].allowed_models == (CLAUDE,)
    assert load_agents(agents)["coach"].allowed_models is None
    agents.write_text(base + 'allowed_models = ["claude"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="allowed_models"):
        load_agents(agents)
