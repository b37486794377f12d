"""The Procfile's own commands, run as Heroku runs them (bash, $PORT, config vars in the
environment) against the suite's database: the web process refuses an unmigrated database,
the release phase migrates it (without the OpenRouter key), and then the web process serves,
in as many workers as WEB_CONCURRENCY asks. A configuration error is one line without the key,
and production on SQLite says loudly that its data will be lost."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from app.dev.threaded_server import free_port
from app.ops.logging import configure_logging
from app.settings import Settings
from tests.support import local_client, wait_for

# Real processes, as Heroku starts them: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-or-v1-very-secret-0123456789abcdef"


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def _path() -> str:
    # `python` and `uvicorn` resolve to this interpreter's, as they do on a dyno's PATH.
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


JWT_SECRET = "deploy-test-secret-0123456789abcdef"


def _env(database_url: str, port: int) -> dict[str, str]:
    return {
        "PATH": _path(),
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "OPENROUTER_SIMULATOR": "true",
        # Production verifies the host app's JWTs (and derives the stream-token key from this).
        "AUTH_JWT_SECRET": JWT_SECRET,
    }


def _health(process: subprocess.Popen, http: httpx.Client) -> httpx.Response | None:
    """GET /healthz once the server answers (None until then); fails if it has exited."""
    assert process.poll() is None, process.stderr.read()
    try:
        return http.get("/healthz")
    except httpx.TransportError:
        return None


def _run(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """One Procfile-style command under bash with only `env` (and PATH) set, to its end."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env={"PATH": _path(), "HOME": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_procfile_release_then_web_on_the_suites_database(empty_database, tmp_path):
    commands = _procfile()
    assert set(commands) == {"release", "web"}
    port = free_port()
    env = _env(empty_database.url, port)

    refused = subprocess.run(
        ["bash", "-c", commands["web"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # One process: with workers, uvicorn's supervisor exits 0 even when they fail to start.
    assert refused.returncode != 0
    assert "lacks migration(s) 1" in refused.stderr
    assert "run `python -m app migrate`" in refused.stderr

    release = subprocess.run(
        ["bash", "-c", commands["release"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert release.returncode == 0, release.stderr
    assert release.stdout.startswith("migrations applied: [1")

    web = subprocess.Popen(
        ["bash", "-c", commands["web"]],
        cwd=tmp_path,
        # Heroku's Python buildpack sets WEB_CONCURRENCY by dyno size: two worker processes.
        env={**env, "WEB_CONCURRENCY": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    # A user of the host app, signed in with its shared secret.
    user = jwt.encode({"sub": "user-1", "exp": int(time.time()) + 300}, JWT_SECRET, "HS256")
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=5,
            headers={"Authorization": f"Bearer {user}"},
        ) as http:
            health = wait_for(lambda: _health(web, http), timeout=30, what="web to answer")
            assert health.json()["database"] == "ok"
            reply = http.post("/api/chat", json={"message": "hello", "stream": False})
            assert reply.status_code == 200, reply.text
            listed = http.get("/api/conversations").json()["conversations"]
            assert [c["message_count"] for c in listed] == [2]
            # Whichever worker a new connection lands on accepts the stream token: every
            # process derives its key from AUTH_JWT_SECRET alike.
            started = http.post("/api/chat/messages", json={"message": "again"}).json()
            for _ in range(4):
                stream = httpx.get(f"http://127.0.0.1:{port}{started['stream_url']}", timeout=5)
                assert stream.status_code == 200, stream.text
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        _, err = web.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught, as a dyno expects.
    assert web.returncode in (0, -signal.SIGTERM), err.decode()
    assert err.decode().count("Application startup complete") == 2  # both workers served


@pytest.mark.parametrize(
    "command",
    [
        _procfile()["web"],
        # The other documented way to start it; uvicorn's own log set-up is in force there.
        "APP_ENV=production uvicorn --factory app.main:create_app --port $PORT",
    ],
    ids=["procfile", "uvicorn-factory"],
)
def test_a_configuration_error_is_one_line_naming_the_setting_without_the_key(command, tmp_path):
    result = _run(command, tmp_path, PORT=str(free_port()), OPENROUTER_API_KEY=KEY)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert [line for line in output.splitlines() if line.strip()] == [
        "error: invalid configuration: OPENROUTER_MODEL must be set when APP_ENV=production"
        " (the local OpenRouter simulator is only used in development)"
    ]
    # Not the key, nor the tail pydantic's `input_value` would show of it.
    assert KEY[-8:] not in output


def test_the_release_phase_needs_no_openrouter_settings(empty_database, tmp_path):
    url = empty_database.url
    result = _run(_procfile()["release"], tmp_path, APP_ENV="production", DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("migrations applied: [1")


def test_the_release_phase_without_a_database_url_refuses_instead_of_migrating_a_file(tmp_path):
    # It used to migrate ./data/streamchat.db, on a disk the platform discards, and exit 0: a
    # release that looked like success. The Procfile's release runs as production (as its web).
    result = _run(_procfile()["release"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert [line for line in output.splitlines() if line.strip()] == [
        "error: invalid configuration: DATABASE_URL must be set when APP_ENV=production "
        "(migrate would migrate ./data/streamchat.db, a file the platform discards)"
    ]
    assert not (tmp_path / "data").exists()


def test_production_on_sqlite_because_database_url_is_unset_warns_loudly(tmp_path):
    # Unmigrated, so it stops right after the warning (production does not migrate at start).
    result = _run(
        _procfile()["web"],
        tmp_path,
        PORT=str(free_port()),
        OPENROUTER_API_KEY=KEY,
        OPENROUTER_MODEL="openai/gpt-4o",
        AUTH_JWT_SECRET="deploy-test-secret-0123456789abcdef",
    )
    assert result.returncode != 0
    # Production logs JSON lines (LOG_FORMAT's default there): one object per line.
    records = [json.loads(line) for line in result.stderr.splitlines()]
    [banner] = [r["message"] for r in records if r["logger"] == "app" and r["level"] == "WARNING"]
    assert banner.startswith("\n****")
    assert "APP_ENV=production on SQLITE (DATABASE_URL is unset)" in banner
    assert "WILL BE\n  LOST" in banner
    assert KEY not in result.stderr


def test_serve_in_development_logs_where_it_listens_and_each_request(tmp_path):
    # What `scripts/serve` runs. The simulator's own uvicorn used to silence both lines.
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        cwd=tmp_path,
        env={"PATH": _path(), "HOME": str(tmp_path), "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with local_client(f"http://127.0.0.1:{port}", timeout=5) as http:
            health = wait_for(lambda: _health(serve, http), timeout=30, what="serve to answer")
        assert health.status_code == 200
    finally:
        serve.send_signal(signal.SIGINT)
        _, err = serve.communicate(timeout=30)
    assert f"INFO uvicorn.error: Uvicorn running on http://127.0.0.1:{port}" in err
    # Our request line (app/ops/logging.py) instead of uvicorn's access log: one per request.
    assert re.search(r"INFO app\.access: GET /healthz 200 [0-9.]+ms", err), err
    assert "uvicorn.access" not in err
    assert "LOCAL OPENROUTER SIMULATOR" in err
    # The simulator's own server stays quiet: one "running on" line, ours.
    assert err.count("Uvicorn running on") == 1


def test_logging_set_up_leaves_a_hosts_configuration_alone():
    # Under pytest the root logger has the capture's handlers: a host that chose its own.
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    before = (list(root.handlers), root.level, httpx_logger.level)
    configure_logging()
    configure_logging()
    assert (list(root.handlers), root.level, httpx_logger.level) == before


# --- app.json, the step-by-step guide and the README agree ---------------------------------------

# What an operator types for each config var app.json asks for: the key, and a host app's secret.
ASKED = {"OPENROUTER_API_KEY": KEY, "AUTH_JWT_SECRET": JWT_SECRET}


def _app_json() -> dict:
    return json.loads((ROOT / "app.json").read_text())


def _guide_steps() -> str:
    """The shell block of docs/deploy.md's step-by-step section."""
    section = (ROOT / "docs" / "deploy.md").read_text().split("### Step by step", 1)[1]
    return section.split("```sh", 1)[1].split("```", 1)[0]


def test_app_json_alone_configures_a_production_server_that_starts():
    # A Heroku set-up from app.json: its values, its generated secrets, what it asks for (and
    # refuses to go on without), and what its add-ons set. A dyno that refuses to run is not
    # a deploy.
    env: dict[str, str] = {"DATABASE_URL": "postgres://u:p@db.example:5432/d"}
    for name, var in _app_json()["env"].items():
        if "value" in var:
            env[name] = var["value"]
        elif var.get("generator") == "secret":
            env[name] = "0123456789abcdef" * 4  # Heroku's: 64 hexadecimal characters
        elif var.get("required", True):
            assert name in ASKED, f"app.json asks for {name}: give the test a value for it"
            env[name] = ASKED[name]
    settings = Settings(_env_file=None, **{name.lower(): value for name, value in env.items()})
    assert settings.app_env == "production" and settings.auth == "jwt"


def test_app_json_and_the_guide_create_the_same_add_ons_and_ask_for_the_same_settings():
    steps = _guide_steps()
    created = set(re.findall(r"heroku addons:create (\S+)", steps))
    assert {addon["plan"] for addon in _app_json()["addons"]} == created
    required = {
        name
        for name, var in _app_json()["env"].items()
        if var.get("required", True) and "value" not in var and "generator" not in var
    }
    config_set = steps.split("heroku config:set", 1)[1].split("git push", 1)[0]
    assert required <= set(re.findall(r"([A-Z_]+)=", config_set))


def test_a_deploy_button_is_mentioned_only_where_there_is_one():
    readme = (ROOT / "README.md").read_text()
    has_button = "https://heroku.com/deploy" in readme
    for path in ("README.md", "docs/deploy.md"):
        text = (ROOT / path).read_text()
        assert has_button or not re.search(r"deploy.{0,20}button", text, re.I | re.S), path
