"""`GET /api/conversations?q=` and `GET /api/conversations/{id}/export`, over a real server and
database, with two signed-in users: what one wrote is never found or exported by the other."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from urllib.parse import unquote

import httpx
import pytest

from app.dev.simulator import Behaviour
from tests.http.identity_support import JWT_SETTINGS, signed_in
from tests.support import chat_turn, settled_generations


@pytest.fixture
def server_url(start_server) -> str:
    return start_server(**JWT_SETTINGS).url


def test_search_finds_the_callers_messages_best_first_with_marked_snippets(server_url, fake):
    fake.enqueue(
        Behaviour(tokens=["The walrus sleeps on ice."]),
        Behaviour(tokens=["A walrus, another walrus, walruses: walrus."]),
        Behaviour(tokens=["Bob's walrus is a secret."]),
    )
    with signed_in(server_url, "alice") as alice, signed_in(server_url, "bob") as bob:
        once = chat_turn(alice, "Tell me about seals")
        often = chat_turn(alice, "And more?")
        chat_turn(bob, "walrus walrus walrus walrus")

        found = alice.get("/api/conversations", params={"q": "walrus"})
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["next"] is None
        results = body["conversations"]
        assert [r["id"] for r in results] == [often["conversation_id"], once["conversation_id"]]
        assert [r["message_id"] for r in results] == [often["message_id"], once["message_id"]]
        first = results[1]
        assert first["title"] == "Tell me about seals" and first["agent"] == "chat"
        assert set(first) == {"id", "title", "agent", "updated_at", "snippet", "message_id"}
        assert first["snippet"][1::2] == ["walrus"]
        assert "The walrus sleeps on ice" in "".join(first["snippet"])

        # Bob finds his own only; `limit` and `agent` as for the list.
        [mine] = bob.get("/api/conversations", params={"q": "walrus"}).json()["conversations"]
        assert mine["title"] == "walrus walrus walrus walrus"
        limited = alice.get("/api/conversations", params={"q": "walrus", "limit": 1})
        assert [r["id"] for r in limited.json()["conversations"]] == [often["conversation_id"]]
        coach = alice.get("/api/conversations", params={"q": "walrus", "agent": "coach"})
        assert coach.json() == {"conversations": [], "next": None}


@pytest.mark.parametrize("q", ['"', "*", "NEAR(", "-", "-walrus", "a:b", "((", "^"])
def test_odd_search_input_finds_nothing_and_never_fails(server_url, fake, q):
    fake.enqueue(Behaviour(tokens=["something else"]))
    with signed_in(server_url, "alice") as alice:
        chat_turn(alice, "a walrus")
        response = alice.get("/api/conversations", params={"q": q})
        assert response.status_code == 200, response.text
        assert response.json() == {"conversations": [], "next": None}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"q": ""}, "invalid_query"),
        ({"q": "   "}, "invalid_query"),
        ({"q": "x" * 501}, "invalid_query"),
        ({"q": "walrus", "limit": "0"}, "invalid_query"),
        ({"q": "walrus", "limit": "many"}, "invalid_query"),
        ({"q": "walrus", "cursor": "abc"}, "invalid_query"),
        ({"q": "walrus", "agent": "nobody"}, "unknown_agent"),
        ({"q": "wal\x00rus"}, "invalid_field"),
    ],
)
def test_a_search_it_cannot_run_is_a_422(server_url, params, code):
    with signed_in(server_url, "alice") as alice:
        response = alice.get("/api/conversations", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code


def test_a_search_needs_a_signed_in_user(server_url):
    response = httpx.get(f"{server_url}/api/conversations", params={"q": "walrus"})
    assert response.status_code == 401


def test_export_as_markdown_and_json_carries_models_times_and_exact_costs(
    server_url, fake, database
):
    fake.enqueue(
        Behaviour(tokens=["Tides follow ", "the **moon**."], cost=Decimal("0.000123")),
        Behaviour(tokens=["Twice a day."], cost=Decimal("0.0000005")),
    )
    with signed_in(server_url, "alice") as alice, signed_in(server_url, "bob") as bob:
        first = chat_turn(alice, "Why tides? Ünïcode / title")
        second = chat_turn(alice, "How often?", first["conversation_id"])
        settled_generations(database, second["message_id"])
        url = f"/api/conversations/{first['conversation_id']}/export"

        as_json = alice.get(url, params={"format": "json"})
        assert as_json.status_code == 200, as_json.text
        assert as_json.headers["content-type"] == "application/json"
        exported = json.loads(as_json.text)
        stored = database.query(
            "SELECT id, created_at FROM messages WHERE conversation_id = :id ORDER BY seq",
            id=first["conversation_id"],
        )
        assert [m["id"] for m in exported["messages"]] == [m["id"] for m in stored]
        assert [(m["role"], m["content"]) for m in exported["messages"]] == [
            ("user", "Why tides? Ünïcode / title"),
            ("assistant", "Tides follow the **moon**."),
            ("user", "How often?"),
            ("assistant", "Twice a day."),
        ]
        assert [m["cost_usd"] for m in exported["messages"]] == [
            None,
            "0.000123",
            None,
            "0.0000005",
        ]
        assert exported["total_cost_usd"] == "0.0001235"
        assert [m["model"] for m in exported["messages"]] == [
            None,
            "openai/gpt-4o",
            None,
            "openai/gpt-4o",
        ]
        assert [m["created_at"][:19] for m in exported["messages"]] == [
            str(m["created_at"])[:19].replace(" ", "T") for m in stored
        ]

        disposition = as_json.headers["content-disposition"]
        date = exported["updated_at"][:10]
        assert disposition.startswith(
            f'attachment; filename="Why-tides-Unicode-title-{date}.json";'
        )
        [encoded] = re.findall(r"filename\*=UTF-8''(\S+)", disposition)
        assert unquote(encoded) == f"Why-tides-Ünïcode-title-{date}.json"

        as_markdown = alice.get(url)  # markdown unless asked otherwise
        assert as_markdown.headers["content-type"] == "text/markdown; charset=utf-8"
        assert as_markdown.headers["content-disposition"].startswith(
            f'attachment; filename="Why-tides-Unicode-title-{date}.md";'
        )
        text = as_markdown.text
        assert text.startswith("# Why tides? Ünïcode / title\n")
        assert "total cost $0.0001235" in text
        # Each message under its heading, in order, read back from the file.
        sections = re.findall(r"^## ([^\n]+)\n\n(.*?)(?=\n## |\Z)", text, re.M | re.S)
        assert [(heading.split(" · ")[0], body.strip()) for heading, body in sections] == [
            (m["role"].replace("user", "You").replace("assistant", "Assistant"), m["content"])
            for m in exported["messages"]
        ]
        reply_heading = sections[1][0]
        assert "`openai/gpt-4o`" in reply_heading and reply_heading.endswith("$0.000123")
        assert exported["messages"][1]["created_at"][:10] in reply_heading

        # Another user's conversation is not there; a format it cannot make is a 422.
        assert bob.get(url).json()["error"]["code"] == "conversation_not_found"
        assert bob.get(url).status_code == 404
        bad = alice.get(url, params={"format": "pdf"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_query")
