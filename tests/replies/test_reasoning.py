"""Reasoning models, citations and OpenRouter's wire as recorded streams show it, end to end.

A reply's thinking is relayed as `reasoning` events among the `delta`s, in one id sequence,
saved apart from the content, replayed with the same ids after a restart, and its
`reasoning_details` go back upstream with that turn. Citations are `annotation` events. Each
generation records its usage details, and knows its id and model from the first chunk.
"""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
from httpx_sse import EventSource

from app.dev.simulator import Behaviour, error_behaviour
from tests.support import (
    SSE,
    content_of,
    local_client,
    read_sse,
    reply_row,
    settled_generations,
    wait_for,
)

ENCRYPTED = {
    "type": "reasoning.encrypted",
    "data": "gAAAA-opaque-ciphertext",
    "id": "rs_1",
    "format": "openai-responses-v1",
    "index": 0,
}
SUMMARY = {"type": "reasoning.summary", "summary": "Weighed two readings.", "index": 1}
CITED = {
    "type": "url_citation",
    "url_citation": {
        "url": "https://example.org/tides",
        "title": "Tides",
        "content": "Tides follow the moon.",
        "start_index": 0,
        "end_index": 5,
    },
}


def chat(client: httpx.Client, message: str, conversation_id: str | None = None) -> list[SSE]:
    body = {"message": message}
    if conversation_id:
        body["conversation_id"] = conversation_id
    return read_sse(client, "POST", "/api/chat", json=body)


def stop_after(client: httpx.Client, message: str, event_name: str) -> list[SSE]:
    """A two-step reply stopped as soon as an event named `event_name` has arrived."""
    reply = client.post("/api/chat/messages", json={"message": message}).json()
    events: list[SSE] = []
    with client.stream("GET", reply["stream_url"]) as response:
        for sse in EventSource(response).iter_sse():
            events.append(SSE(sse.id, sse.event, json.loads(sse.data)))
            if sse.event == event_name:
                client.post(f"/api/messages/{reply['message_id']}/stop")
    return events


def test_reasoning_streams_among_the_deltas_is_saved_and_replays_after_a_restart(
    start_server, fake, database
):
    fake.enqueue(
        Behaviour(
            reasoning=["Tides? ", "The moon."],
            reasoning_at={2: ["Add the sun."]},
            tokens=["The ", "moon ", "and ", "sun."],
        )
    )
    first = start_server()
    with local_client(first.url) as http:
        live = chat(http, "Why tides?")
    first.stop()

    assert [e.event for e in live] == [
        "meta",
        "reasoning",
        "reasoning",
        "delta",
        "delta",
        "reasoning",
        "delta",
        "delta",
        "done",
    ]
    assert [int(e.id) for e in live] == list(range(1, 10))  # one sequence for both
    assert [e.data["content"] for e in live if e.event == "reasoning"] == [
        "Tides? ",
        "The moon.",
        "Add the sun.",
    ]
    assert content_of(live) == "The moon and sun."
    assert live[-1].data["usage"]["reasoning_tokens"] == 3
    message_id = live[0].data["message_id"]
    row = reply_row(database, message_id)
    assert (row["content"], row["reasoning"]) == (
        "The moon and sun.",
        "Tides? The moon.Add the sun.",
    )

    second = start_server()
    with local_client(second.url) as http:
        stream_url = f"/api/messages/{message_id}/stream"
        replayed = read_sse(http, "GET", stream_url)
        resumed = read_sse(http, "GET", stream_url, headers={"Last-Event-ID": "4"})
    assert [(e.id, e.event, e.data) for e in replayed] == [(e.id, e.event, e.data) for e in live]
    assert [(e.id, e.event) for e in resumed] == [(e.id, e.event) for e in live[4:]]


def test_reasoning_details_go_back_upstream_with_their_turn(client, fake, database):
    # Claude's signed text blocks (streamed in fragments), a summary, o3's encrypted block.
    fake.enqueue(
        Behaviour(
            reasoning=["Let me ", "think."],
            reasoning_details=[SUMMARY, ENCRYPTED],
            tokens=["Yes."],
        ),
        Behaviour(tokens=["Again."]),
    )
    first = chat(client, "Is it?")
    conversation_id = first[0].data["conversation_id"]
    generation_id = next(iter(fake.generations))

    second = chat(client, "Sure?", conversation_id)

    assert second[-1].event == "done"
    history = fake.requests[1]["body"]["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert history[2]["content"] == "Yes."
    assert history[2]["reasoning_details"] == [
        {
            "type": "reasoning.text",
            "text": "Let me think.",
            "signature": f"sig-{generation_id}-0",
            "id": None,
            "format": "anthropic-claude-v1",
            "index": 0,
        },
        SUMMARY,
        ENCRYPTED,
    ]
    # What a person sees: the readable text and the summary; never the encrypted data.
    shown = [e.data["content"] for e in first if e.event == "reasoning"]
    assert shown == ["Let me ", "think.", "Weighed two readings."]
    conversation = client.get(f"/api/conversations/{conversation_id}").text
    assert "Weighed two readings." in conversation
    assert ENCRYPTED["data"] not in conversation
    assert all(ENCRYPTED["data"] not in json.dumps(e.data) for e in first)


def test_the_agents_reasoning_settings_go_upstream(start_server, fake, tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text(
        "[chat]\nsystem_prompt = 'Be brief.'\nreasoning = {effort = 'high', exclude = false}\n"
        "[coach]\nsystem_prompt = 'Coach.'\nreasoning = {max_tokens = 2000}\n"
    )
    server = start_server(agents_file=str(agents))
    with local_client(server.url) as http:
        chat(http, "hi")
        read_sse(http, "POST", "/api/coach", json={"question": "ok?"})
    assert fake.requests[0]["body"]["reasoning"] == {"effort": "high", "exclude": False}
    assert fake.requests[1]["body"]["reasoning"] == {"max_tokens": 2000}


def test_citations_are_relayed_saved_and_replayed(client, fake, database):
    fake.enqueue(Behaviour(tokens=["Tides ", "follow the moon."], annotations=[CITED]))

    live = chat(client, "Why tides?")

    assert [e.event for e in live] == ["meta", "delta", "delta", "annotation", "done"]
    citation = CITED["url_citation"]
    assert live[3].data == citation
    message_id = live[0].data["message_id"]
    replayed = read_sse(client, "GET", f"/api/messages/{message_id}/stream")
    assert [(e.id, e.event, e.data) for e in replayed] == [(e.id, e.event, e.data) for e in live]
    [message] = [
        m
        for m in client.get(f"/api/conversations/{live[0].data['conversation_id']}").json()[
            "messages"
        ]
        if m["role"] == "assistant"
    ]
    assert message["annotations"] == [citation]


def test_usage_details_are_recorded_and_the_cost_is_always_usage_cost(client, fake, database):
    fake.enqueue(
        Behaviour(
            tokens=["ok"],
            reasoning=["hm"],
            cost=Decimal("0.0001"),
            is_byok=True,
            cached_tokens=11,
            cache_write_tokens=22,
            upstream_cost=Decimal("0.0042"),
        )
    )
    events = chat(client, "hi")
    [row] = settled_generations(database, events[0].data["message_id"])
    assert (row["cost_source"], row["cost_picousd"]) == ("usage", 100_000_000)
    assert (row["upstream_cost_picousd"], bool(row["is_byok"])) == (4_200_000_000, True)
    assert (row["cached_tokens"], row["cache_write_tokens"], row["reasoning_tokens"]) == (11, 22, 1)
    assert row["first_reasoning_at"] is not None and row["first_token_at"] is not None
    assert events[-1].data["cost_usd"] == 0.0001


def test_without_the_header_a_reply_stopped_mid_stream_knows_its_generation_and_model(
    client, fake, database
):
    fake.enqueue(
        Behaviour(
            tokens=["a "] * 200, delay=0.02, generation_header=False, model="x/answering-model"
        )
    )
    events = stop_after(client, "hi", "delta")

    assert events[-1].event == "done" and events[-1].data["finish_reason"] == "stopped"
    assert events[-1].data["model"] == "x/answering-model"  # not the one asked for
    [row] = settled_generations(database, events[0].data["message_id"])
    [upstream] = fake.generations.values()
    assert (row["generation_id"], row["model"]) == (upstream.id, "x/answering-model")
    assert (row["cost_source"], row["cost_picousd"]) == ("generation", int(upstream.cost * 10**12))


def test_a_reply_stopped_before_its_first_chunk_without_the_header_has_no_cost_visibly(
    client, fake, database
):
    # Only `: OPENROUTER PROCESSING` so far, and no X-Generation-Id: OpenRouter has given no
    # id to look the cost up by, and has no way to list generations. The row says `none`.
    fake.enqueue(Behaviour(processing=30, processing_interval=0.05, generation_header=False))
    reply = client.post("/api/chat/messages", json={"message": "hi"}).json()
    wait_for(lambda: fake.generations, what="the upstream request")
    client.post(f"/api/messages/{reply['message_id']}/stop")
    events = read_sse(client, "GET", reply["stream_url"])

    assert [e.event for e in events] == ["meta", "done"]
    assert events[-1].data["cost_usd"] is None
    [row] = settled_generations(database, reply["message_id"])
    assert (row["generation_id"], row["status"]) == (None, "cancelled")
    assert (row["cost_source"], row["cost_picousd"]) == ("none", None)
    assert fake.generation_lookups == {}


def test_a_reply_stopped_before_its_first_chunk_with_the_header_gets_its_cost(
    client, fake, database
):
    fake.enqueue(Behaviour(processing=30, processing_interval=0.05))
    reply = client.post("/api/chat/messages", json={"message": "hi"}).json()
    wait_for(lambda: fake.generations, what="the upstream request")
    wait_for(
        lambda: settled_or_streaming_id(database, reply["message_id"]), what="the generation id"
    )
    client.post(f"/api/messages/{reply['message_id']}/stop")

    [row] = settled_generations(database, reply["message_id"])
    [upstream] = fake.generations.values()
    assert (row["generation_id"], row["cost_source"]) == (upstream.id, "generation")


def settled_or_streaming_id(database, message_id: str) -> bool:
    rows = database.query(
        "SELECT generation_id FROM generations WHERE message_id = :id", id=message_id
    )
    return bool(rows and rows[0]["generation_id"])


def test_processing_comments_longer_than_the_read_timeout_keep_the_upstream_alive(
    start_server, fake
):
    # Comments every 0.5 s for 2.5 s against a 1 s read timeout: each one is bytes read.
    fake.enqueue(Behaviour(processing=2.5, processing_interval=0.5, tokens=["Done", "."]))
    server = start_server(upstream_read_timeout=1.0)
    with local_client(server.url) as http:
        events = chat(http, "think long")
    assert [e.event for e in events] == ["meta", "delta", "delta", "done"]
    assert len(fake.requests) == 1  # not a timeout and a retry


def test_a_402_of_the_in_flight_budget_is_retried_after_retry_after(client, fake, database):
    fake.enqueue(error_behaviour("in_flight_budget"), Behaviour(tokens=["ok"]))
    events = chat(client, "hi")
    assert [e.event for e in events] == ["meta", "delta", "done"]
    assert fake.requests[1]["at"] - fake.requests[0]["at"] >= 1.0  # Retry-After: 1


def test_a_moderation_refusal_gives_the_reasons_and_never_the_flagged_input(client, fake, database):
    fake.default = error_behaviour("moderation")
    events = chat(client, "something flagged")
    assert [e.event for e in events] == ["meta", "error"]
    error = events[-1].data
    assert (error["code"], error["retryable"]) == ("moderation", False)
    assert "violence" in error["message"] and "harassment" in error["message"]
    assert len(fake.requests) == 1
    row = reply_row(database, events[0].data["message_id"])
    assert row["error_message"] == error["message"]
    assert "SECRET FLAGGED TEXT" not in error["message"]


def test_finish_reasons_length_and_content_filter_reach_done(client, fake):
    fake.enqueue(
        Behaviour(tokens=["cut"], finish_reason="length"),
        Behaviour(tokens=["fil"], finish_reason="content_filter"),
    )
    cut, filtered = chat(client, "long"), chat(client, "bad")
    assert (cut[-1].event, cut[-1].data["finish_reason"]) == ("done", "length")
    assert (filtered[-1].event, filtered[-1].data["finish_reason"]) == ("done", "content_filter")
