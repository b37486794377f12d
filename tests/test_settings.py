"""Configuration: start-up refuses what is missing or wrong, with one line naming the setting,
the simulator is only ever chosen on purpose, and the API key never leaves the process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError

from app.dev.simulator import Behaviour
from app.dev.threaded_server import free_port
from app.main import create_app
from app.settings import ConfigError, Settings, load_settings
from tests.support import local_client, read_sse

KEY = "sk-or-v1-very-secret-0123456789"
# Production also needs a way to verify users' tokens (docs/auth.md).
JWT_SECRET = "host-app-jwt-secret-0123456789abcdef"
SETTINGS_ENV = (
    "APP_ENV",
    "OPENROUTER_API_KEY",
    "OPENROUTER_MODEL",
    "OPENROUTER_SIMULATOR",
    "OPENROUTER_BASE_URL",
    "DATABASE_URL",
    "AGENTS_FILE",
    "AUTH_JWT_SECRET",
    "AUTH_MODE",
    "HOST",
)


@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> None:
    """Settings read the environment and `./.env`: neither may leak in from the developer's."""
    monkeypatch.chdir(tmp_path)
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


def serve(tmp_path: Path, command: str = "serve", **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m app serve` (or `command`) with only `env` set, in a directory without a
    `.env` file."""
    return subprocess.run(
        [sys.executable, "-m", "app", command],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output and KEY not in output
    return lines[0]


# --- production start-up ------------------------------------------------------------------------


def test_production_without_key_and_model_will_not_start(tmp_path):
    line = assert_one_clear_line(serve(tmp_path, APP_ENV="production"))
    assert "OPENROUTER_API_KEY" in line and "OPENROUTER_MODEL" in line


@pytest.mark.parametrize(
    ("model", "named", "not_named"),
    [
        (None, "OPENROUTER_MODEL", "OPENROUTER_API_KEY"),
        ("gpt-4o", "OPENROUTER_MODEL", "OPENROUTER_API_KEY"),
    ],
    ids=["no-model", "bad-model"],
)
def test_the_start_up_message_names_only_what_is_wrong(
    clean_env, monkeypatch, model, named, not_named
):
    # The same path as `python -m app serve` (above), without a process per case.
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    if model is not None:
        monkeypatch.setenv("OPENROUTER_MODEL", model)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert named in message and not_named not in message and KEY not in message
    assert "\n" not in message


def test_a_key_without_app_env_will_not_start_an_open_proxy(tmp_path):
    # APP_ENV unset is development, whose default AUTH_MODE=dev lets anyone spend the key.
    line = assert_one_clear_line(serve(tmp_path, OPENROUTER_API_KEY=KEY))
    assert "AUTH_MODE must be set" in line and "OPENROUTER_API_KEY" in line


@pytest.mark.parametrize(
    "name", ["BUDGET_USER_DAILY_USD", "BUDGET_USER_MONTHLY_USD", "BUDGET_GLOBAL_DAILY_USD"]
)
def test_a_budget_past_the_databases_integers_will_not_start(tmp_path, name):
    # $10,000,000 is 10^19 pico-dollars, past a 64-bit integer: every turn was a 500.
    line = assert_one_clear_line(serve(tmp_path, **{name: "10000000"}))
    assert line.startswith(f"error: invalid configuration: {name}: must be at most"), line


def test_production_with_a_bad_agents_file_names_agent_and_field(tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text(VALID_AGENTS.replace("temperature = 0.3", "temperature = 3"))
    result = serve(
        tmp_path,
        APP_ENV="production",
        OPENROUTER_API_KEY=KEY,
        OPENROUTER_MODEL="openai/gpt-4o",
        AUTH_JWT_SECRET=JWT_SECRET,
        AGENTS_FILE=str(agents),
    )
    line = assert_one_clear_line(result)
    assert "'coach'" in line and "temperature" in line


def test_the_key_never_shows_in_the_settings(clean_env):
    settings = Settings(
        _env_file=None,
        app_env="production",
        openrouter_api_key=KEY,
        openrouter_model="a/b",
        auth_jwt_secret=JWT_SECRET,
    )
    assert settings.openrouter_api_key.get_secret_value() == KEY
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert KEY not in text


# --- the database cannot be reached ------------------------------------------------------------


@pytest.mark.parametrize("command", ["migrate", "serve"])
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_an_unreachable_database_ends_migrate_and_serve_in_one_line(tmp_path, command, backend):
    # Nobody listens on the port; the SQLite file's directory cannot be made (under a file).
    (tmp_path / "a-file").write_text("")
    url = {
        "postgresql": f"postgresql://app:db-password-0123456789@127.0.0.1:{free_port()}/app",
        "sqlite": f"sqlite:///{tmp_path}/a-file/streamchat.db",
    }[backend]
    result = serve(tmp_path, command, DATABASE_URL=url, DATABASE_CONNECT_TIMEOUT="3")
    line = assert_one_clear_line(result)
    assert line.startswith("error: cannot connect to the database"), line
    assert "db-password" not in line


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["gpt-4o", "openai/", "/gpt-4o", "open ai/gpt-4o", "openai/gpt 4o", "OpenAI/gpt-4o"]
)
def test_a_model_not_in_provider_model_form_is_rejected(clean_env, model):
    with pytest.raises(ValidationError, match="provider/model"):
        Settings(_env_file=None, openrouter_model=model)


@pytest.mark.parametrize(
    "model",
    ["openai/gpt-4o", "anthropic/claude-3.5-sonnet", "meta-llama/llama-3.1-8b-instruct:free"],
)
def test_real_model_ids_are_accepted(clean_env, model):
    assert Settings(_env_file=None, openrouter_model=f" {model} ").openrouter_model == model


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db.example:5432/app", "postgresql://u:p@db.example:5432/app"),
        ("postgresql+asyncpg://u:p@db/app", "postgresql://u:p@db/app"),
        ("postgresql://u:p@db/app", "postgresql://u:p@db/app"),
        ("sqlite:///./data/x.db", "sqlite+aiosqlite:///./data/x.db"),
    ],
)
def test_database_urls_are_normalized(clean_env, url, expected):
    assert Settings(_env_file=None, database_url=url).database_url == expected


def test_an_unsupported_database_url_is_rejected(clean_env):
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(_env_file=None, database_url="mysql://u:p@db/app")


# --- the simulator is chosen only on purpose ----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "simulator"),
    [
        ({}, True),  # development is the default
        ({"APP_ENV": "development", "OPENROUTER_API_KEY": KEY, "AUTH_MODE": "dev"}, False),
        ({"APP_ENV": "development", "OPENROUTER_API_KEY": "  "}, True),
        ({"APP_ENV": "test"}, False),
        (
            {
                "APP_ENV": "production",
                "OPENROUTER_API_KEY": KEY,
                "OPENROUTER_MODEL": "a/b",
                "AUTH_JWT_SECRET": JWT_SECRET,
            },
            False,
        ),
        (
            {
                "APP_ENV": "production",
                "OPENROUTER_SIMULATOR": "true",
                "AUTH_JWT_SECRET": JWT_SECRET,
            },
            True,
        ),
        ({"APP_ENV": "development", "OPENROUTER_SIMULATOR": "false"}, False),
    ],
)
def test_when_the_simulator_is_used(clean_env, monkeypatch, env, simulator):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None).use_simulator is simulator


def test_production_without_a_key_is_an_error_not_the_simulator(clean_env, monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("OPENROUTER_SIMULATOR", "false")
    with pytest.raises(ValidationError, match="OPENROUTER_API_KEY"):
        Settings(_env_file=None)


def test_development_without_a_key_answers_from_the_simulator(start_server, fake):
    server = start_server(app_env="development", openrouter_api_key=None)
    with local_client(server.url) as http:
        assert http.get("/healthz").json()["upstream"] == "simulator"
        events = read_sse(http, "POST", "/api/chat", json={"message": "hi"})
    assert events[-1].event == "done"
    assert "".join(e.data["content"] for e in events if e.event == "delta").startswith(
        "[simulated reply]"
    )
    assert fake.requests == []  # the configured upstream was never called


def test_the_development_simulator_makes_a_long_reply_on_request(start_server):
    # The directive docs/api.md gives for trying stop and resume by hand.
    server = start_server(app_env="development", openrouter_api_key=None)
    with local_client(server.url) as http:
        events = read_sse(
            http, "POST", "/api/chat", json={"message": "go [[sim tokens=40 delay=0.01]]"}
        )
    deltas = [e.data["content"] for e in events if e.event == "delta"]
    assert deltas == ["[simulated reply]", *(f" {i}" for i in range(2, 41))]
    assert events[-1].event == "done"


def test_production_with_a_key_calls_the_configured_upstream(start_server, fake):
    server = start_server(app_env="production", migrate_on_start=True, auth_jwt_secret=JWT_SECRET)
    fake.enqueue(Behaviour(tokens=["real"]))
    user = jwt.encode({"sub": "user-1", "exp": int(time.time()) + 300}, JWT_SECRET, "HS256")
    signed_in = {"Authorization": f"Bearer {user}"}
    with local_client(server.url, headers=signed_in) as http:
        assert http.get("/healthz").json()["upstream"] == "openrouter"
        # Production signs its users in: the turn routes ask who is calling.
        signed_in = jwt.encode({"sub": "u1", "exp": time.time() + 60}, JWT_SECRET, "HS256")
        events = read_sse(
            http,
            "POST",
            "/api/chat",
            json={"message": "hi"},
            headers={"Authorization": f"Bearer {signed_in}"},
        )
    assert [e.data["content"] for e in events if e.event == "delta"] == ["real"]
    assert len(fake.requests) == 1


# --- the agents file ----------------------------------------------------------------------------

VALID_AGENTS = """
[chat]
temperature = 0.7
system_prompt = "You help."

[coach]
temperature = 0.3
system_prompt = "You coach."
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[chat\nsystem_prompt = 'x'", ["not valid TOML"]),
        (VALID_AGENTS.replace("temperature = 0.7", "temperature = 3"), ["'chat'", "temperature"]),
        (VALID_AGENTS.replace("temperature = 0.3", "temprature = 0.3"), ["'coach'", "temprature"]),
        (VALID_AGENTS.replace('system_prompt = "You help."', ""), ["'chat'", "system_prompt"]),
        (VALID_AGENTS.replace("[chat]", "[chat]\nmodel = 'gpt4'"), ["'chat'", "model"]),
        (VALID_AGENTS.split("[coach]")[0], ["missing agent", "coach"]),
        ('chat = "not a table"\n' + VALID_AGENTS.split("[chat]")[1], ["[chat]", "table"]),
    ],
    ids=[
        "bad-toml",
        "temperature",
        "unknown-field",
        "no-prompt",
        "bad-model",
        "no-coach",
        "scalar",
    ],
)
def test_a_bad_agents_file_stops_create_app_naming_the_problem(
    make_settings, tmp_path, text, expected
):
    path = tmp_path / "agents.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        create_app(make_settings(agents_file=path))
    message = str(caught.value)
    assert all(part in message for part in expected), message
    assert str(path) in message


def test_a_missing_agents_file_stops_create_app(make_settings, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        create_app(make_settings(agents_file=tmp_path / "nope.toml"))


# --- the key stays secret -----------------------------------------------------------------------


def test_the_key_is_in_no_log_line_and_no_response(start_server, fake, caplog):
    caplog.set_level(logging.DEBUG)
    server = start_server(openrouter_api_key=KEY)
    fake.enqueue(Behaviour(tokens=["Hi"]), Behaviour(status=401), Behaviour(drop_after=1))
    bodies: list[str] = []
    with local_client(server.url) as http:
        meta = read_sse(http, "POST", "/api/chat", json={"message": "hi"})[0].data
        for _ in range(2):  # refused by the upstream, then cut mid-stream
            with http.stream("POST", "/api/chat", json={"message": "again"}) as response:
                bodies.append(response.read().decode())
        for path in [
            f"/api/conversations/{meta['conversation_id']}",
            "/api/conversations",
            "/api/catalog",
            "/healthz",
            f"/api/messages/{meta['message_id']}/stream",
        ]:
            bodies.append(http.get(path).text)
    server.stop()  # shutdown logs too

    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in fake.requests)
    assert any(r.name.startswith("httpx") for r in caplog.records)  # the capture saw httpx
    assert "upstream_401" in bodies[0] and "upstream_connection_error" in bodies[1]
    assert KEY not in caplog.text
    assert not [r for r in caplog.records if KEY in str(r.args) or KEY in str(r.msg)]
    assert not [body for body in bodies if KEY in body]
