"""Request limits on a real server: a user's messages per minute (the moving window of
app/admission/rate_window.py, its clock moved by the test) and a process's live replies."""

from __future__ import annotations

import time
from types import SimpleNamespace

import app.admission.rate_window
from app.dev.simulator import Behaviour
from tests.support import local_client


def test_requests_per_minute_refuse_with_the_window_headers_until_it_moves(
    start_server, monkeypatch
):
    now = [time.time()]
    # The in-memory window reads `time.time()` from its module's `time`: the window's clock.
    monkeypatch.setattr(app.admission.rate_window, "time", SimpleNamespace(time=lambda: now[0]))
    server = start_server(limit_user_rpm=2)
    with local_client(server.url) as http:
        for _ in range(2):
            assert http.post("/api/chat/messages", json={"message": "hi"}).status_code == 202

        refused = http.post("/api/chat/messages", json={"message": "hi"})

        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.json()["error"]["limit"] == "requests_per_minute"
        assert refused.headers["RateLimit-Limit"] == "2"
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Reset"] == refused.headers["Retry-After"]

        now[0] += 61  # the window has moved past both turns
        assert http.post("/api/chat/messages", json={"message": "hi"}).status_code == 202


def test_a_full_process_is_503_before_anything_is_saved(start_server, fake, database):
    fake.default = Behaviour(tokens=["a", "b"], stall_after=1)  # live until stopped
    server = start_server(limit_process_concurrent=1)
    with local_client(server.url) as http:
        live = http.post("/api/chat/messages", json={"message": "hi"})
        assert live.status_code == 202
        saved = database.query("SELECT count(*) AS n FROM messages")

        busy = http.post("/api/chat", json={"message": "hi"})

        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "server_busy"
        assert int(busy.headers["Retry-After"]) > 0
        assert database.query("SELECT count(*) AS n FROM messages") == saved
        assert len(fake.requests) == 1

        http.post(f"/api/messages/{live.json()['message_id']}/stop")
        again = http.post("/api/chat/messages", json={"message": "hi"})
        assert again.status_code == 202
        http.post(f"/api/messages/{again.json()['message_id']}/stop")


def test_a_user_over_their_own_rate_is_refused_before_taking_a_process_slot(
    start_server, fake, database
):
    # A refused turn must not hold one of the process's slots while it is counted: a flood of
    # them would make other users' turns 503 server_busy. Its own limit answers first.
    fake.default = Behaviour(tokens=["a", "b"], stall_after=1)  # live until stopped
    server = start_server(limit_process_concurrent=1, limit_user_rpm=1)
    with local_client(server.url) as http:
        live = http.post("/api/chat/messages", json={"message": "hi"})
        assert live.status_code == 202
        saved = database.query("SELECT count(*) AS n FROM messages")

        refused = http.post("/api/chat", json={"message": "hi"})

        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert database.query("SELECT count(*) AS n FROM messages") == saved
        http.post(f"/api/messages/{live.json()['message_id']}/stop")
