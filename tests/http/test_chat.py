"""End to end: a chat turn and a coach call through a real server, checked on the wire, in the
request the fake OpenRouter received, and in the database."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from decimal import Decimal

import pytest

from app.dev.simulator import Behaviour
from tests.support import content_of, local_client, read_sse

TOKENS = ["Hel", "lo", ",", " world", "!"]


def test_chat_turn_streams_events_in_order_and_persists_everything(client, fake, database):
    fake.enqueue(Behaviour(tokens=TOKENS, cost=Decimal("0.00046")))

    events = read_sse(client, "POST", "/api/chat", json={"message": "Say hello"})

    assert [e.event for e in events] == ["meta"] + ["delta"] * len(TOKENS) + ["done"]
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    meta, done = events[0].data, events[-1].data
    assert meta["agent"] == "chat" and meta["model"] == "openai/gpt-4o"
    assert content_of(events) == "Hello, world!"
    generation = next(iter(fake.generations.values()))
    assert done == {
        "message_id": meta["message_id"],
        "status": "complete",
        "finish_reason": "stop",
        "model": "openai/gpt-4o",
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": len(TOKENS),
            "total_tokens": generation.prompt_tokens + len(TOKENS),
            "reasoning_tokens": 0,
        },
        "cost_usd": 0.00046,
        "cache_saved_usd": 0.0,  # nothing read from or written to a prompt cache
    }

    sent = fake.requests[0]
    assert sent["body"]["model"] == "openai/gpt-4o" and sent["body"]["stream"] is True
    assert sent["body"]["temperature"] == 0.7 and sent["body"]["max_tokens"] == 1024
    assert sent["body"]["messages"][0]["role"] == "system"
    assert sent["body"]["messages"][-1] == {"role": "user", "content": "Say hello"}
    assert sent["headers"]["authorization"] == "Bearer sk-or-test-secret-key"
    assert sent["headers"]["x-openrouter-title"] == "streamchat"
    assert sent["headers"]["http-referer"] == "http://localhost:8000"

    [conversation] = database.query("SELECT * FROM conversations")
    assert conversation["id"] == meta["conversation_id"] and conversation["user_id"] == "dev"
    user, assistant = database.query("SELECT * FROM messages ORDER BY seq")
    assert (user["id"], user["role"], user["content"]) == (
        meta["user_message_id"],
        "user",
        "Say hello",
    )
    assert assistant["id"] == meta["message_id"] and assistant["content"] == "Hello, world!"
    assert (assistant["status"], assistant["finish_reason"]) == ("complete", "stop")
    assert (assistant["model"], assistant["temperature"]) == ("openai/gpt-4o", 0.7)
    [row] = database.query("SELECT * FROM generations")
    assert row["generation_id"] == generation.id
    assert (row["message_id"], row["conversation_id"], row["agent"], row["user_id"]) == (
        meta["message_id"],
        meta["conversation_id"],
        "chat",
        "dev",
    )
    assert (row["requested_model"], row["model"]) == ("openai/gpt-4o", "openai/gpt-4o")
    assert (row["cost_picousd"], row["cost_source"]) == (460_000_000, "usage")
    assert row["completion_tokens"] == len(TOKENS)
    assert row["prompt_tokens"] == generation.prompt_tokens
    assert row["started_at"] <= row["first_token_at"] <= row["ended_at"]


def test_conversation_api_lists_reads_and_deletes(client, fake):
    first = read_sse(client, "POST", "/api/chat", json={"message": "first"})[0].data
    second = read_sse(client, "POST", "/api/chat", json={"message": "second"})[0].data

    listed = client.get("/api/conversations").json()["conversations"]
    assert [c["id"] for c in listed] == [second["conversation_id"], first["conversation_id"]]
    assert listed[0]["message_count"] == 2 and listed[0]["total_cost_usd"] > 0

    detail = client.get(f"/api/conversations/{first['conversation_id']}").json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    reply = detail["messages"][1]
    assert reply["status"] == "complete" and reply["model"] == "openai/gpt-4o"
    assert reply["usage"]["completion_tokens"] > 0 and reply["cost_usd"] > 0
    assert detail["total_cost_usd"] == reply["cost_usd"]
    assert detail["created_at"].endswith("+00:00")

    assert client.delete(f"/api/conversations/{first['conversation_id']}").status_code == 204
    assert client.get(f"/api/conversations/{first['conversation_id']}").status_code == 404
    assert client.delete(f"/api/conversations/{first['conversation_id']}").status_code == 404
    assert [c["id"] for c in client.get("/api/conversations").json()["conversations"]] == [
        second["conversation_id"]
    ]


def test_history_of_the_conversation_goes_upstream_on_the_next_turn(client, fake):
    fake.enqueue(Behaviour(tokens=["Paris"]), Behaviour(tokens=["Lyon"]))
    meta = read_sse(client, "POST", "/api/chat", json={"message": "A city?"})[0].data
    read_sse(
        client,
        "POST",
        "/api/chat",
        json={"message": "Another?", "conversation_id": meta["conversation_id"]},
    )

    messages = fake.requests[1]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "A city?"),
        ("assistant", "Paris"),
        ("user", "Another?"),
    ]
    detail = client.get(f"/api/conversations/{meta['conversation_id']}").json()
    assert [m["content"] for m in detail["messages"]] == ["A city?", "Paris", "Another?", "Lyon"]


def test_get_stream_serves_browsers_eventsource(client, fake):
    fake.enqueue(Behaviour(tokens=["Hi"]))
    events = read_sse(client, "GET", "/api/chat/stream", params={"message": "hey"})
    assert [e.event for e in events] == ["meta", "delta", "done"]


def test_stream_false_answers_once_with_json(client, fake, database):
    fake.enqueue(Behaviour(tokens=TOKENS, cost=Decimal("0.0001")))
    response = client.post("/api/chat", json={"message": "hi", "stream": False})
    assert response.status_code == 200
    body = response.json()
    assert body["content"] == "Hello, world!" and body["cost_usd"] == 0.0001
    assert body["finish_reason"] == "stop" and body["model"] == "openai/gpt-4o"
    assert {"conversation_id", "message_id", "user_message_id", "agent", "usage"} <= body.keys()
    assert fake.requests[0]["body"]["stream"] is False
    [row] = database.query("SELECT cost_source, cost_picousd FROM generations")
    assert row == {"cost_source": "usage", "cost_picousd": 100_000_000}


def test_coach_reviews_a_chat_conversation_and_is_stored_apart(client, fake, database):
    fake.enqueue(Behaviour(tokens=["The sky is blue."]), Behaviour(tokens=["Be", " kinder."]))
    chat = read_sse(client, "POST", "/api/chat", json={"message": "Why is the sky blue?"})[0].data

    events = read_sse(
        client,
        "POST",
        "/api/coach",
        json={
            "conversation_id": chat["conversation_id"],
            "context": "draft email",
            "question": "Was I polite?",
        },
    )
    assert events[0].event == "meta" and events[0].data["agent"] == "coach"
    assert events[-1].event == "done" and content_of(events) == "Be kinder."
    assert events[0].data["conversation_id"] != chat["conversation_id"]

    body = fake.requests[1]["body"]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 512
    prompt = body["messages"][-1]["content"]
    assert "User: Why is the sky blue?" in prompt and "Assistant: The sky is blue." in prompt
    assert "draft email" in prompt and "Was I polite?" in prompt
    coach = database.query(
        "SELECT agent, subject_conversation_id FROM conversations WHERE id = :id",
        id=events[0].data["conversation_id"],
    )
    assert coach == [{"agent": "coach", "subject_conversation_id": chat["conversation_id"]}]


def test_coach_stream_for_eventsource_takes_query_parameters(client, fake):
    fake.enqueue(Behaviour(tokens=["Tip"]))
    events = read_sse(client, "GET", "/api/coach/stream", params={"question": "How do I start?"})
    assert [e.event for e in events] == ["meta", "delta", "done"]
    assert "How do I start?" in fake.requests[0]["body"]["messages"][-1]["content"]


def test_catalog_lists_each_agents_effective_config(client):
    catalog = client.get("/api/catalog").json()
    assert catalog["default_model"] == "openai/gpt-4o"
    assert catalog["agents"]["chat"]["model"] == "openai/gpt-4o"
    assert catalog["agents"]["chat"]["temperature"] == 0.7
    coach = catalog["agents"]["coach"]
    shown = ("model", "fallback_models", "temperature", "max_tokens", "history_messages")
    assert {key: coach[key] for key in shown} == {
        "model": "openai/gpt-4o",
        "fallback_models": [],
        "temperature": 0.3,
        "max_tokens": 512,
        "history_messages": 20,
    }


def test_health(client):
    assert client.get("/healthz").json()["status"] == "ok"


def test_many_streams_ending_at_the_same_moment_lose_no_row(server, fake, database):
    streams = 40
    # Equal, slow-ish token timing makes every stream end within the same few milliseconds.
    fake.default = Behaviour(tokens=["a", "b", "c"], delay=0.05)

    def one(i: int) -> str:
        with local_client(server.url, timeout=30) as http:
            events = read_sse(http, "POST", "/api/chat", json={"message": f"stream {i}"})
        assert events[-1].event == "done", events[-1]
        return events[0].data["message_id"]

    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        ids = list(pool.map(one, range(streams)))

    assert len(set(ids)) == streams
    counts = database.query(
        "SELECT (SELECT COUNT(*) FROM conversations) AS conversations,"
        " (SELECT COUNT(*) FROM messages) AS messages,"
        " (SELECT COUNT(*) FROM messages WHERE status = 'complete' AND content = 'abc') AS replies,"
        " (SELECT COUNT(*) FROM generations WHERE cost_source = 'usage') AS costs"
    )
    assert counts == [
        {"conversations": streams, "messages": 2 * streams, "replies": streams, "costs": streams}
    ]


@pytest.mark.parametrize("path", ["/api/chat", "/api/coach"])
def test_meta_goes_out_before_the_upstream_answers(start_server, fake, path):
    server = start_server(ping_interval=0.2)
    fake.enqueue(Behaviour(tokens=["late"], headers_delay=1.0))
    seen: list[str] = []
    body = {"message": "hi"} if path == "/api/chat" else {"question": "hi"}
    with (
        local_client(server.url) as http,
        http.stream("POST", path, json=body) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        for line in response.iter_lines():
            if line.startswith(("event:", ":")):
                seen.append(line.split(" ")[0] if line.startswith(":") else line)
    # meta first, then pings while the upstream is silent, then the reply
    assert seen[0] == "event: meta"
    first_delta = seen.index("event: delta")
    assert ":" in seen[1:first_delta]
    assert seen[-1] == "event: done"


@pytest.mark.parametrize("failing", [False, True])
def test_a_slow_stream_false_answer_is_kept_alive_and_still_parses_as_json(
    start_server, fake, failing
):
    server = start_server(nonstream_keepalive_after=0.1, ping_interval=0.1)
    upstream_answers = threading.Event()
    fake.enqueue(Behaviour(tokens=["Hello"], gate=upstream_answers, status=400 if failing else 200))
    with (
        local_client(server.url) as http,
        http.stream("POST", "/api/chat", json={"message": "hi", "stream": False}) as response,
    ):
        # Committed while the upstream has not answered: the router sees a first byte.
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        chunks = response.iter_bytes()
        first = next(chunks)
        assert first.strip() == b"" and first
        upstream_answers.set()
        body = json.loads(first + b"".join(chunks))
    if failing:
        assert body["status"] == "error" and body["code"] == "upstream_400"
        assert body["retryable"] is False
    else:
        assert body["status"] == "complete" and body["content"] == "Hello"
    assert {"conversation_id", "message_id", "user_message_id", "model"} <= body.keys()
    assert len(fake.requests) == 1
