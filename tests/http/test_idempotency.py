"""`Idempotency-Key` on the turn routes: a retried POST gets the reply its first try started,
never a second billed turn, also when the tries arrive at the same moment."""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import timedelta

import httpx
import pytest

from app.dev.simulator import Behaviour
from app.storage.tables import idempotency_keys, now
from tests.http.identity_support import JWT_SETTINGS, SECRET, token
from tests.support import local_client, migrated_store, read_sse, run_async, wait_for

CHAT = {"message": "hi"}
COACH = {"question": "hi"}


def counts(database) -> dict:
    [row] = database.query(
        "SELECT (SELECT COUNT(*) FROM conversations) AS conversations,"
        " (SELECT COUNT(*) FROM messages) AS messages,"
        " (SELECT COUNT(*) FROM idempotency_keys) AS keys"
    )
    return row


def all_finished(database) -> bool:
    return not database.query("SELECT id FROM messages WHERE status = 'streaming'")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(("path", "body"), [("/api/chat", CHAT), ("/api/coach", COACH)])
def test_a_retried_two_step_post_gets_the_same_202_and_another_body_409(
    start_server, fake, database, path, body
):
    server = start_server(**JWT_SETTINGS)
    mine = {"Authorization": f"Bearer {token(SECRET, 'HS256')}", "Idempotency-Key": "k-1"}
    with local_client(server.url) as http:
        first = http.post(f"{path}/messages", json=body, headers=mine)
        assert first.status_code == 202, first.text
        again = http.post(f"{path}/messages", json=dict(reversed(body.items())), headers=mine)
        assert again.status_code == 202 and reply_of(again.json()) == reply_of(first.json())

        assert_error(
            http.post(f"{path}/messages", json={**body, "stream": False}, headers=mine),
            409,
            "idempotency_key_reused",
        )
        # The one-step form of the same body is another request too.
        assert_error(http.post(path, json=body, headers=mine), 409, "idempotency_key_reused")
        # Keys are per user: another user's same key is a turn of their own.
        theirs = {**mine, "Authorization": f"Bearer {token(SECRET, 'HS256', sub='user-2')}"}
        other = http.post(f"{path}/messages", json=body, headers=theirs)
        assert other.status_code == 202 and other.json()["message_id"] != first.json()["message_id"]
    wait_for(lambda: all_finished(database), what="the replies to finish")
    assert len(fake.requests) == 2
    assert counts(database) == {"conversations": 2, "messages": 4, "keys": 2}


def reply_of(accepted: dict) -> dict:
    """A 202 answer's reply: its ids and stream path. The `stream_url`'s stream token is signed
    anew for each answer (it carries the time it was issued), so a retry's differs."""
    return {**accepted, "stream_url": accepted["stream_url"].split("?", 1)[0]}


def test_a_retried_sse_post_gets_the_same_stream_from_the_start_or_after_last_event_id(
    client, fake, database
):
    fake.enqueue(Behaviour(tokens=["a", "b", "c"], delay=0.02))
    key = {"Idempotency-Key": "retry me"}
    first = read_sse(client, "POST", "/api/chat", json=CHAT, headers=key)
    again = read_sse(client, "POST", "/api/chat", json=CHAT, headers=key)
    assert [(e.id, e.event, e.data) for e in again] == [(e.id, e.event, e.data) for e in first]
    tail = read_sse(client, "POST", "/api/chat", json=CHAT, headers={**key, "Last-Event-ID": "3"})
    assert [(e.id, e.event) for e in tail] == [(e.id, e.event) for e in first[3:]]
    end = client.post("/api/chat", json=CHAT, headers={**key, "Last-Event-ID": first[-1].id})
    assert end.status_code == 204
    assert len(fake.requests) == 1
    assert counts(database) == {"conversations": 1, "messages": 2, "keys": 1}


def test_a_retried_stream_false_post_gets_the_same_json(client, fake, database):
    fake.enqueue(Behaviour(tokens=["Hello"]))
    body = {**COACH, "stream": False}
    first = client.post("/api/coach", json=body, headers={"Idempotency-Key": "x"})
    again = client.post("/api/coach", json=body, headers={"Idempotency-Key": "x"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["content"] == "Hello"
    assert len(fake.requests) == 1
    assert counts(database) == {"conversations": 1, "messages": 2, "keys": 1}


def test_simultaneous_requests_with_one_key_start_one_turn(server, fake, database):
    fake.default = Behaviour(tokens=["x", "y", "z"], delay=0.05)
    tries = 8
    barrier = threading.Barrier(tries)

    def post(i: int) -> object:
        form = ["/api/chat/messages", "/api/chat"][i % 2]
        with local_client(server.url, timeout=30) as http:
            barrier.wait(timeout=60)
            key = {"Idempotency-Key": f"same for {form}"}
            if form == "/api/chat":
                return [
                    (e.id, e.event, e.data)
                    for e in read_sse(http, "POST", form, json=CHAT, headers=key)
                ]
            response = http.post(form, json=CHAT, headers=key)
            assert response.status_code == 202, response.text
            return response.json()

    with concurrent.futures.ThreadPoolExecutor(tries) as pool:
        answers = list(pool.map(post, range(tries)))
    two_step, streamed = answers[0::2], answers[1::2]
    assert all(reply_of(answer) == reply_of(two_step[0]) for answer in two_step)
    assert all(answer == streamed[0] for answer in streamed)
    assert streamed[0][-1][1] == "done"
    wait_for(lambda: all_finished(database), what="the replies to finish")
    assert len(fake.requests) == 2
    assert counts(database) == {"conversations": 2, "messages": 4, "keys": 2}


@pytest.mark.parametrize("key", [b"", b"x" * 201, b"tab\there", b"caf\xc3\xa9"])
def test_a_bad_key_is_refused_before_anything_is_saved(client, fake, database, key):
    for path, body in [("/api/chat", CHAT), ("/api/coach/messages", COACH)]:
        response = client.post(path, json=body, headers={"Idempotency-Key": key})
        assert_error(response, 422, "invalid_field")
    assert counts(database) == {"conversations": 0, "messages": 0, "keys": 0}
    assert fake.requests == []


def test_keys_older_than_a_day_are_swept_and_can_be_used_again(client, fake, database):
    key = {"Idempotency-Key": "old"}
    first = client.post("/api/chat/messages", json=CHAT, headers=key)

    async def age_keys() -> None:
        async with migrated_store(database.url) as store:
            stamp = now() - timedelta(hours=24, seconds=1)
            await store.writer.write([idempotency_keys.update().values(created_at=stamp)])

    kept = client.post("/api/chat/messages", json=CHAT, headers=key)
    assert reply_of(kept.json()) == reply_of(first.json())
    run_async(age_keys())
    wait_for(lambda: counts(database)["keys"] == 0, what="the sweep of the expired key")
    reused = client.post("/api/chat/messages", json={"message": "another"}, headers=key)
    assert reused.status_code == 202 and reused.json()["message_id"] != first.json()["message_id"]
