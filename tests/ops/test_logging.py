"""LOG_FORMAT=json as production runs it: `python -m app serve` in a process of its own, every
line of its stderr parsed as JSON; the request and reply lines carry what on-call needs and no
secret (the OpenRouter key, a user's token, a stream token)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from decimal import Decimal

import httpx
import pytest

from app.core.redact import redact
from app.dev.simulator import Behaviour
from app.dev.threaded_server import free_port
from app.ops.logging import valid_request_id
from tests.support import read_sse, serve_env, wait_until_serving

KEY = "sk-or-v1-log-test-secret-0123456789"
ACCESS_TOKEN = "user-token-that-must-not-be-logged"


@pytest.fixture
def json_server(fake_url, database, tmp_path):
    port = free_port()
    env = serve_env(
        tmp_path=tmp_path,
        port=port,
        database_url=database.url,
        fake_url=fake_url,
        OPENROUTER_API_KEY=KEY,
        LOG_FORMAT="json",
        # As in every test app (tests/conftest.py): a title's upstream call would take the
        # fake's queued answers, meant for the turns below.
        AUTO_TITLES="false",
        GENERATION_LOOKUP_TIMEOUT="3",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    wait_until_serving(process, f"http://127.0.0.1:{port}", output=process.stderr.read)

    def stop() -> list[dict]:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert KEY not in err and ACCESS_TOKEN not in err and "stream_token=ey" not in err
        return [json.loads(line) for line in err.splitlines()]  # every line is JSON

    yield http, stop
    http.close()
    if process.poll() is None:
        process.kill()


def test_json_logs_one_line_per_request_and_per_reply_and_no_secrets(json_server, fake):
    http, stop = json_server
    fake.enqueue(Behaviour(tokens=["Hi", " there"], cost=Decimal("0.000321")))
    # A one-step stream with the user's token in the query, as an EventSource sends it.
    events = read_sse(
        http,
        "GET",
        "/api/chat/stream",
        params={"message": "hello", "access_token": ACCESS_TOKEN},
        headers={"X-Request-ID": "router-id-1234"},
    )
    message_id = events[-1].data["message_id"]
    # The two-step form: its stream_url carries a stream token.
    fake.enqueue(Behaviour(status=400))
    started = http.post("/api/chat/messages", json={"message": "fails"}).json()
    read_sse(http, "GET", started["stream_url"])
    bad_id = http.get("/healthz", headers={"X-Request-ID": "x" * 201})
    made_id = bad_id.headers["x-request-id"]
    assert made_id != "x" * 201 and valid_request_id(made_id)
    records = stop()

    access = [r for r in records if r["logger"] == "app.access"]
    stream_line = next(r for r in access if r["path"].startswith("/api/chat/stream"))
    assert stream_line["request_id"] == "router-id-1234"
    assert stream_line["method"] == "GET" and stream_line["status"] == 200
    assert "access_token=[redacted]" in stream_line["path"]
    assert stream_line["duration_ms"] > 0
    token_line = next(
        r for r in access if r["path"].startswith(f"/api/messages/{started['message_id']}")
    )
    # Its stream_url as sent, with any token in its query redacted.
    assert token_line["path"] == redact(started["stream_url"])
    assert any(r["request_id"] == made_id and r["path"] == "/healthz" for r in access)

    replies = {r["message_id"]: r for r in records if r["logger"] == "app.reply"}
    done = replies[message_id]
    assert done["request_id"] == "router-id-1234"  # the run was started under that request
    assert done["status"] == "complete" and done["agent"] == "chat" and done["user_id"] == "dev"
    assert done["requested_model"] == done["model"] == "openai/gpt-4o"
    assert done["generation_ids"] and done["generation_ids"][0].startswith("gen-sim-")
    assert done["completion_tokens"] == 2 and done["cost_usd"] == "0.000321"
    assert done["cost_source"] == "usage"
    assert (
        done["time_to_first_token_ms"] > 0 and done["duration_ms"] >= done["time_to_first_token_ms"]
    )
    assert done["time_to_first_reasoning_ms"] is None  # the model did not think aloud
    failed = replies[started["message_id"]]
    assert failed["status"] == "error" and failed["cost_source"] == "not_billed"
    assert {r["level"] for r in records} <= {"INFO", "WARNING", "ERROR"}


def test_request_ids_pass_through_when_printable_and_short(client):
    kept = client.get("/healthz", headers={"X-Request-ID": "abc-123 / 7"})
    assert kept.headers["x-request-id"] == "abc-123 / 7"
    made = client.get("/healthz", headers={"X-Request-ID": "tab\there"})
    assert made.headers["x-request-id"] != "tab\there" and len(made.headers["x-request-id"]) == 32
    assert client.get("/nowhere").headers["x-request-id"]  # a 404 has one too
