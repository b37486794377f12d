"""LOG_FORMAT=json as production runs it: `python -m app serve` in a process of its own, every
line of its stderr parsed as JSON; the request and reply lines carry what on-call needs and no
secret (the OpenRouter key, a user's token, a stream token)."""

from __future__ import annotations

import json
import signal
from decimal import Decimal

import pytest

from app.core.redact import redact
from app.dev.simulator import Behaviour
from app.ops.logging import valid_request_id
from tests.support import local_client, read_sse

KEY = "sk-or-v1-log-test-secret-0123456789"
ACCESS_TOKEN = "user-token-that-must-not-be-logged"


@pytest.fixture
def json_server(start_process):
    yield from _log_server(start_process, "json")


@pytest.fixture
def text_server(start_process):
    yield from _log_server(start_process, "text")


def _log_server(start_process, log_format: str):
    server = start_process(
        OPENROUTER_API_KEY=KEY,
        LOG_FORMAT=log_format,
        # As in every test app (tests/conftest.py): a title's upstream call would take the
        # fake's queued answers, meant for the turns below.
        AUTO_TITLES="false",
        GENERATION_LOOKUP_TIMEOUT="3",
    )
    http = local_client(server.url)

    def stop() -> list:
        err = server.stop(signal.SIGINT)
        assert KEY not in err and ACCESS_TOKEN not in err and "stream_token=ey" not in err
        if log_format == "text":
            return err.splitlines()
        return [json.loads(line) for line in err.splitlines()]  # every line is JSON

    yield http, stop
    http.close()


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
    # uvicorn's own lines (its start-up, its shutdown) were logged: without their terminal
    # colours, which it passes in a `color_message` field of ANSI escapes.
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert not [r for r in records if "color_message" in r or "\\u001b" in json.dumps(r)]


def test_text_logs_escape_control_characters_so_no_request_forges_a_line(text_server):
    http, stop = text_server
    forged = "2026-01-01 00:00:00,000 INFO app.access: GET /api/admin/costs 200 1.0ms"
    assert http.get("/nowhere%0a" + forged.replace(" ", "%20")).status_code == 404
    assert http.get("/nowhere%0d%1b[2J%c2%85" + "x").status_code == 404
    lines = stop()

    assert not [line for line in lines if line.startswith(forged[:24])]
    assert not [line for line in lines if "\x1b" in line or "\r" in line or "\x85" in line]
    access = [line for line in lines if " app.access: GET /nowhere" in line]
    assert len(access) == 2, lines
    assert "/nowhere\\n2026-01-01 00:00:00,000 INFO app.access" in access[0]
    assert "/nowhere\\r\\x1b[2J\\x85x" in access[1]


def test_request_ids_pass_through_when_printable_and_short(client):
    kept = client.get("/healthz", headers={"X-Request-ID": "abc-123 / 7"})
    assert kept.headers["x-request-id"] == "abc-123 / 7"
    made = client.get("/healthz", headers={"X-Request-ID": "tab\there"})
    assert made.headers["x-request-id"] != "tab\there" and len(made.headers["x-request-id"]) == 32
    assert client.get("/nowhere").headers["x-request-id"]  # a 404 has one too
