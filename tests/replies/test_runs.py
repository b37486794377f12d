"""Replies as runs: resumption from any event, stop, clients that leave, retries and fallback."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import httpx
import pytest
from httpx_sse import EventSource

from app.dev.simulator import Behaviour
from tests.support import (
    SHARED_STREAM_SECRET,
    SSE,
    content_of,
    generation_rows,
    local_client,
    read_some,
    read_sse,
    reply_row,
    settled_generations,
    wait_for,
)

TOKENS = [f" t{i}" for i in range(30)]


def start_reply(
    client: httpx.Client, message: str = "hi", path: str = "/api/chat/messages"
) -> dict:
    response = client.post(path, json={"message": message})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["stream_url"].startswith(f"/api/messages/{body['message_id']}/stream?stream_token=")
    return body


def test_reconnecting_at_random_points_delivers_every_event_exactly_once(client, fake):
    rng = random.Random(7)
    for _ in range(3):
        fake.enqueue(Behaviour(tokens=TOKENS, delay=0.01))
        reply = start_reply(client)
        received: list[SSE] = []
        while not received or received[-1].event not in ("done", "error"):
            headers = {"Last-Event-ID": received[-1].id} if received else {}
            received += read_some(client, reply["stream_url"], rng.randint(1, 6), headers=headers)
        assert [e.id for e in received] == [str(i) for i in range(1, len(TOKENS) + 3)]
        assert content_of(received) == "".join(TOKENS)
        assert received[-1].event == "done"
        # at the end, EventSource is told to stop reconnecting
        end = client.get(reply["stream_url"], headers={"Last-Event-ID": received[-1].id})
        assert end.status_code == 204


def test_query_parameter_works_for_clients_that_cannot_set_headers(client, fake):
    fake.enqueue(Behaviour(tokens=TOKENS))
    reply = start_reply(client)
    full = read_sse(client, "GET", reply["stream_url"])
    tail = read_sse(client, "GET", reply["stream_url"], params={"last_event_id": "5"})
    assert [(e.id, e.event, e.data) for e in tail] == [(e.id, e.event, e.data) for e in full[5:]]


def test_a_finished_reply_replays_from_the_database_after_a_restart(start_server, fake, database):
    shared = {"stream_token_secret": SHARED_STREAM_SECRET}
    fake.enqueue(Behaviour(tokens=TOKENS))
    first = start_server(**shared)
    with local_client(first.url) as http:
        reply = start_reply(http)
        live = read_sse(http, "GET", reply["stream_url"])
    first.stop()

    second = start_server(**shared)
    with local_client(second.url) as http:
        replayed = read_sse(http, "GET", reply["stream_url"])
        middle = read_sse(http, "GET", reply["stream_url"], headers={"Last-Event-ID": "10"})
        end = http.get(reply["stream_url"], headers={"Last-Event-ID": live[-1].id})
    assert [(e.id, e.event, e.data) for e in replayed] == [(e.id, e.event, e.data) for e in live]
    assert [e.id for e in middle] == [e.id for e in live[10:]]
    assert end.status_code == 204


def test_stop_ends_the_run_saves_the_partial_reply_and_settles_its_cost(client, fake, database):
    fake.enqueue(Behaviour(tokens=TOKENS * 10, delay=0.02))
    reply = start_reply(client)
    events: list[SSE] = []
    with client.stream("GET", reply["stream_url"]) as response:
        for sse in EventSource(response).iter_sse():
            events.append(SSE(sse.id, sse.event, json.loads(sse.data)))
            if len(events) == 4:
                stopped = client.post(f"/api/messages/{reply['message_id']}/stop")
                assert stopped.status_code == 202
                assert stopped.json() == {"message_id": reply["message_id"], "status": "stopped"}
    assert events[-1].event == "done"
    assert events[-1].data["finish_reason"] == "stopped" and events[-1].data["status"] == "stopped"

    row = reply_row(database, reply["message_id"])
    assert row["status"] == "stopped" and row["finish_reason"] == "stopped"
    assert row["content"] == content_of(events) and 0 < len(row["content"]) < len(
        "".join(TOKENS * 10)
    )
    # No usage chunk on a cancelled stream: the cost comes from the generation record.
    [generation] = settled_generations(database, reply["message_id"])
    upstream = fake.generations[generation["generation_id"]]
    assert upstream.cancelled
    assert generation["cost_source"] == "generation"
    assert generation["cost_picousd"] == int(upstream.cost * 10**12)
    # stopping again changes nothing
    again = client.post(f"/api/messages/{reply['message_id']}/stop")
    assert again.status_code == 200 and again.json()["status"] == "stopped"


def test_a_client_that_leaves_does_not_lose_the_reply_or_its_cost(client, fake, database):
    fake.enqueue(Behaviour(tokens=TOKENS, delay=0.01))
    events = read_some(client, "/api/chat", 3, method="POST", json={"message": "hi"})
    message_id = events[0].data["message_id"]

    wait_for(lambda: reply_row(database, message_id)["status"] != "streaming", what="reply end")
    row = reply_row(database, message_id)
    assert (row["status"], row["content"]) == ("complete", "".join(TOKENS))
    [generation] = generation_rows(database, message_id)
    upstream = fake.generations[generation["generation_id"]]
    assert not upstream.cancelled and generation["cost_source"] == "usage"
    assert generation["cost_picousd"] == int(upstream.cost * 10**12)


def test_disconnect_policy_cancel_interrupts_and_still_settles_the_cost(
    start_server, fake, database
):
    server = start_server(disconnect_policy="cancel", disconnect_cancel_delay=0.1)
    fake.enqueue(Behaviour(tokens=TOKENS * 10, delay=0.02))
    with local_client(server.url) as http:
        events = read_some(http, "/api/chat", 4, method="POST", json={"message": "hi"})
    message_id = events[0].data["message_id"]

    wait_for(lambda: reply_row(database, message_id)["status"] != "streaming", what="reply end")
    row = reply_row(database, message_id)
    assert row["status"] == "interrupted" and row["error_code"] == "interrupted"
    assert row["content"].startswith(content_of(events))
    assert len(row["content"]) < len("".join(TOKENS * 10))
    [generation] = settled_generations(database, message_id)
    assert fake.generations[generation["generation_id"]].cancelled
    assert generation["cost_source"] == "generation" and generation["status"] == "cancelled"


def test_under_cancel_a_subscriber_that_returns_in_time_keeps_the_run(start_server, fake, database):
    server = start_server(disconnect_policy="cancel", disconnect_cancel_delay=5)
    fake.enqueue(Behaviour(tokens=TOKENS, delay=0.02))
    with local_client(server.url) as http:
        reply = start_reply(http)
        first = read_some(http, reply["stream_url"], 3)
        rest = read_sse(http, "GET", reply["stream_url"], headers={"Last-Event-ID": first[-1].id})
    assert rest[-1].event == "done"
    assert content_of(first + rest) == "".join(TOKENS)


def test_retryable_errors_before_the_first_token_are_retried_and_each_try_is_a_row(
    client, fake, database
):
    fake.enqueue(
        Behaviour(status=503),
        Behaviour(status=429, retry_after="0.3"),
        Behaviour(tokens=["ok"]),
    )
    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})
    assert [e.event for e in events] == ["meta", "delta", "done"]
    assert len(fake.requests) == 3
    # Retry-After was honoured: the third request came at least 0.3 s after the second.
    assert fake.requests[2]["at"] - fake.requests[1]["at"] >= 0.3

    rows = generation_rows(database, events[0].data["message_id"])
    assert [(r["attempt"], r["status"], r["error_code"], r["cost_source"]) for r in rows] == [
        (1, "error", "upstream_503", "not_billed"),
        (2, "error", "upstream_429", "not_billed"),
        (3, "complete", None, "usage"),
    ]
    assert [r["cost_picousd"] for r in rows[:2]] == [0, 0]
    assert events[-1].data["cost_usd"] == rows[2]["cost_picousd"] / 10**12


def test_a_stopped_reply_names_the_requested_model_while_none_has_answered(client, fake):
    fake.enqueue(Behaviour(tokens=["never"], stall_after=0))
    reply = start_reply(client)
    events: list[SSE] = []
    with client.stream("GET", reply["stream_url"]) as response:
        for sse in EventSource(response).iter_sse():
            events.append(SSE(sse.id, sse.event, json.loads(sse.data)))
            if sse.event == "meta":
                wait_for(lambda: fake.requests, what="the upstream request")
                client.post(f"/api/messages/{reply['message_id']}/stop")
    assert [e.event for e in events] == ["meta", "done"]
    assert events[-1].data["model"] == events[0].data["model"] == "openai/gpt-4o"
    # Replayed from the database (its cost may be settled by then), it names the same model.
    replayed = read_sse(client, "GET", reply["stream_url"])
    assert replayed[-1].data["model"] == "openai/gpt-4o"


def test_retries_stop_at_the_bound_and_the_client_gets_the_last_error(client, fake, database):
    fake.enqueue(*[Behaviour(status=502)] * 5)
    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})
    assert [e.event for e in events] == ["meta", "error"]
    assert events[-1].data["code"] == "upstream_502" and events[-1].data["retryable"] is True
    assert len(fake.requests) == 3  # the first try and UPSTREAM_MAX_RETRIES=2 more
    assert reply_row(database, events[0].data["message_id"])["status"] == "error"


def test_a_retry_after_beyond_the_budget_is_not_waited_for(client, fake):
    fake.enqueue(Behaviour(status=429, retry_after="3600"), Behaviour(tokens=["never"]))
    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})
    assert events[-1].event == "error" and events[-1].data["code"] == "upstream_429"
    assert len(fake.requests) == 1


def test_nothing_is_retried_after_the_first_token(client, fake, database):
    fake.enqueue(Behaviour(tokens=TOKENS, error_after=5, error_code=502), Behaviour(tokens=["x"]))
    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})
    assert [e.event for e in events] == ["meta"] + ["delta"] * 5 + ["error"]
    assert len(fake.requests) == 1
    row = reply_row(database, events[0].data["message_id"])
    assert row["status"] == "error" and row["content"] == "".join(TOKENS[:5])


def test_fallback_models_go_upstream_and_the_answering_model_is_recorded(
    start_server, fake, database, tmp_path: Path
):
    agents = tmp_path / "agents.toml"
    agents.write_text(
        '[chat]\nmodel = "openai/gpt-4o"\n'
        'fallback_models = ["anthropic/claude-3.5-sonnet", "meta-llama/llama-3.1-70b-instruct"]\n'
        'system_prompt = "Be brief."\n'
        '[coach]\nsystem_prompt = "Coach."\n'
    )
    server = start_server(agents_file=agents)
    fake.enqueue(Behaviour(tokens=["hi"], model="anthropic/claude-3.5-sonnet"))
    with local_client(server.url) as http:
        events = read_sse(http, "POST", "/api/chat", json={"message": "hi"})
    assert fake.requests[0]["body"]["models"] == [
        "openai/gpt-4o",
        "anthropic/claude-3.5-sonnet",
        "meta-llama/llama-3.1-70b-instruct",
    ]
    assert events[0].data["model"] == "openai/gpt-4o"
    assert events[-1].data["model"] == "anthropic/claude-3.5-sonnet"
    message_id = events[0].data["message_id"]
    assert reply_row(database, message_id)["model"] == "anthropic/claude-3.5-sonnet"
    [generation] = generation_rows(database, message_id)
    assert (generation["requested_model"], generation["model"]) == (
        "openai/gpt-4o",
        "anthropic/claude-3.5-sonnet",
    )


@pytest.mark.parametrize("last_event_id", ["abc", "-1"])
def test_a_bad_last_event_id_is_a_clear_400(client, fake, last_event_id):
    reply = start_reply(client)
    response = client.get(reply["stream_url"], headers={"Last-Event-ID": last_event_id})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_last_event_id"


def test_the_first_event_sets_a_short_reconnection_time(client, fake):
    fake.enqueue(Behaviour(tokens=["a"]))
    with client.stream("POST", "/api/chat", json={"message": "hi"}) as response:
        retries = [sse.retry for sse in EventSource(response).iter_sse()]
    assert retries[0] == 1000 and set(retries[1:]) == {None}


def test_a_reader_that_falls_behind_still_gets_every_event_and_the_final_one(
    server, fake, database
):
    # A client that stops reading fills the socket buffers, and the server's send waits. The
    # run goes on meanwhile and finishes: what it appended during that wait must still go out.
    tokens = ["x" * 65536] * 128  # 8 MB: more than the socket buffers between us hold
    fake.enqueue(Behaviour(tokens=tokens))
    small_buffer = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)]
    with (
        httpx.Client(
            base_url=server.url,
            timeout=30,
            transport=httpx.HTTPTransport(socket_options=small_buffer),
        ) as http,
        http.stream("POST", "/api/chat", json={"message": "hi"}) as response,
    ):
        received = EventSource(response).iter_sse()
        meta = next(received)
        message_id = json.loads(meta.data)["message_id"]
        wait_for(
            lambda: reply_row(database, message_id)["status"] != "streaming",
            timeout=60,  # 8 MB through the server: seconds of CPU, more on a loaded machine
            what="the end",
        )
        events = [SSE(sse.id, sse.event, json.loads(sse.data)) for sse in received]
    assert events[-1].event == "done" and events[-1].data["status"] == "complete"
    assert [e.id for e in events] == [str(i) for i in range(2, len(tokens) + 3)]
    assert content_of(events) == "".join(tokens)
