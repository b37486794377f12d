"""The one-step GET forms reconnected to as a browser's EventSource does: the same URL, the
message in it, and `Last-Event-ID`. A reconnect resumes the reply it started, never a new turn.
(The browser itself doing so: tests/http/test_browser.py.)"""

from __future__ import annotations

import pytest

from app.dev.simulator import Behaviour
from tests.http.identity_support import JWT_SETTINGS, SECRET, token
from tests.support import local_client, read_sse

PATHS = {
    "chat": ("/api/chat/stream", {"message": "hi"}),
    "coach": ("/api/coach/stream", {"question": "hi"}),
}


def counts(database) -> dict:
    [row] = database.query(
        "SELECT (SELECT COUNT(*) FROM conversations) AS conversations,"
        " (SELECT COUNT(*) FROM messages) AS messages"
    )
    return row


@pytest.mark.parametrize("agent", ["chat", "coach"])
def test_a_reconnect_resumes_the_reply_even_after_a_restart(start_server, fake, database, agent):
    path, params = PATHS[agent]
    fake.enqueue(Behaviour(tokens=["a", "b", "c", "d"]))
    first = start_server()
    with local_client(first.url) as http:
        events = read_sse(http, "GET", path, params=params)
    message_id = events[0].data["message_id"]
    assert [e.id for e in events] == [f"{message_id}:{n}" for n in range(1, 7)]
    assert events[-1].event == "done"
    first.stop()

    second = start_server()
    with local_client(second.url) as http:
        # What the EventSource does when the finished reply's connection closes: 204 stops it.
        end = http.get(path, params=params, headers={"Last-Event-ID": events[-1].id})
        assert end.status_code == 204
        # A connection dropped mid-reply: the rest, numbered as before, from the database.
        rest = read_sse(http, "GET", path, params=params, headers={"Last-Event-ID": events[2].id})
        assert [(e.id, e.event, e.data) for e in rest] == [
            (e.id, e.event, e.data) for e in events[3:]
        ]
    assert len(fake.requests) == 1
    assert counts(database) == {"conversations": 1, "messages": 2}


def test_a_reconnect_to_a_live_reply_gets_each_event_once(server, fake):
    fake.enqueue(Behaviour(tokens=[f"t{i} " for i in range(20)], delay=0.02))
    with local_client(server.url) as http:
        with http.stream("GET", "/api/chat/stream", params={"message": "hi"}) as response:
            lines = response.iter_lines()
            first_id = next(line for line in lines if line.startswith("id: "))[4:]
        events = read_sse(
            http,
            "GET",
            "/api/chat/stream",
            params={"message": "hi"},
            headers={"Last-Event-ID": first_id},
        )
    message_id, _ = first_id.split(":")
    assert [e.id for e in events] == [f"{message_id}:{n}" for n in range(2, 23)]
    assert "".join(e.data["content"] for e in events if e.event == "delta") == "".join(
        f"t{i} " for i in range(20)
    )
    assert len(fake.requests) == 1


def test_only_the_callers_own_reply_of_that_agent_is_resumed(start_server, fake, database):
    server = start_server(**JWT_SETTINGS)
    owner, other = token(SECRET, "HS256"), token(SECRET, "HS256", sub="user-2")
    with local_client(server.url) as http:
        events = read_sse(
            http, "GET", "/api/chat/stream", params={"message": "hi", "access_token": owner}
        )
        before, requests = counts(database), len(fake.requests)
        resume = {"Last-Event-ID": events[0].id}
        for path, params in [
            ("/api/chat/stream", {"message": "hi", "access_token": other}),  # another user's
            ("/api/coach/stream", {"question": "hi", "access_token": owner}),  # not a coach reply
        ]:
            response = http.get(path, params=params, headers=resume)
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "message_not_found"
        for bad in ["5", f"{events[0].data['message_id']}:-1", "x:1"]:
            response = http.get(
                "/api/chat/stream",
                params={"message": "hi", "access_token": owner},
                headers={"Last-Event-ID": bad},
            )
            assert response.status_code == 400, bad
            assert response.json()["error"]["code"] == "invalid_last_event_id"
        mine = http.get(
            "/api/chat/stream",
            params={"message": "hi", "access_token": owner},
            headers={"Last-Event-ID": events[-1].id},
        )
        assert mine.status_code == 204
    assert counts(database) == before and len(fake.requests) == requests
