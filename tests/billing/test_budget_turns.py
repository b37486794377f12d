"""Whose budget a turn is charged to, and which requests are turns: the caller's (the token's
user), on keyed and unkeyed turns alike; an idempotent retry and an EventSource resume reserve
nothing and are not counted against LIMIT_USER_RPM."""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import UTC, datetime
from decimal import Decimal

from app.dev.simulator import Behaviour
from tests.billing.budget_support import ADMIN, Clock, probe, settled, usd
from tests.http.identity_support import JWT_SETTINGS, bearer
from tests.support import accepted, local_client, read_sse, wait_for

DAY = datetime(2026, 3, 10, 9, tzinfo=UTC)


def reservations(database) -> list[dict]:
    return database.query("SELECT id, user_id, state FROM budget_reservations ORDER BY created_at")


def counts(database) -> dict:
    [row] = database.query(
        "SELECT (SELECT COUNT(*) FROM messages) AS messages,"
        " (SELECT COUNT(*) FROM idempotency_keys) AS keys,"
        " (SELECT COUNT(*) FROM budget_reservations) AS reservations"
    )
    return row


def test_each_turn_is_charged_to_its_caller(start_app, fake, database):
    server = start_app(Clock(DAY), **JWT_SETTINGS, budget_user_daily_usd=Decimal(1))
    with local_client(server.url) as http:
        ids = {}
        for user in ("ann", "bob"):
            response = http.post("/api/chat/messages", json={"message": "hi"}, headers=bearer(user))
            assert response.status_code == 202, response.text
            read_sse(http, "GET", response.json()["stream_url"])
            ids[user] = response.json()["message_id"]
        # One-step and keyed turns too.
        events = read_sse(http, "POST", "/api/chat", json={"message": "hi"}, headers=bearer("ann"))
        ids["ann-one-step"] = events[0].data["message_id"]
        keyed = http.post(
            "/api/chat/messages",
            json={"message": "hi"},
            headers={**bearer("bob"), "Idempotency-Key": "k-1"},
        )
        assert keyed.status_code == 202, keyed.text
        read_sse(http, "GET", keyed.json()["stream_url"])
        ids["bob-keyed"] = keyed.json()["message_id"]

        owners = {row["id"]: row["user_id"] for row in reservations(database)}
        assert owners == {
            ids["ann"]: "ann",
            ids["bob"]: "bob",
            ids["ann-one-step"]: "ann",
            ids["bob-keyed"]: "bob",
        }
        for message_id in ids.values():
            settled(database, message_id)
        ann = http.get("/api/me/usage", headers=bearer("ann")).json()
        assert ann["user_id"] == "ann" and ann["day"]["spent_usd"] > 0
        assert http.get("/api/me/usage", headers=bearer("carol")).json()["day"] == {
            **ann["day"],
            "spent_usd": 0,
            "reserved_usd": 0,
            "unknown_cost_usd": 0,
        }


def test_one_users_spent_budget_refuses_only_them(start_app, database):
    server = start_app(Clock(DAY), **JWT_SETTINGS)
    with local_client(server.url) as http:
        put = http.put("/api/admin/users/ann/budget", json={"daily_usd": 0}, headers=ADMIN)
        assert put.status_code == 200, put.text
        refused = http.post("/api/chat/messages", json={"message": "hi"}, headers=bearer("ann"))
        assert refused.status_code == 402
        assert refused.json()["error"]["code"] == "budget_exceeded"
        allowed = http.post("/api/chat/messages", json={"message": "hi"}, headers=bearer("bob"))
        assert allowed.status_code == 202, allowed.text
        # Only admins read or set a budget, their own included.
        for user in ("ann", "bob"):
            for method, body in (("GET", None), ("PUT", {"daily_usd": 5})):
                response = http.request(
                    method, f"/api/admin/users/{user}/budget", json=body, headers=bearer(user)
                )
                assert response.status_code == 403, response.text
                assert response.json()["error"]["code"] == "forbidden"
        assert http.get("/api/admin/users/ann/budget", headers=ADMIN).json()["override"] == {
            "daily_usd": 0
        }


def test_a_keyed_turn_reserves_before_its_rows_and_a_retry_reserves_nothing(
    start_app, fake, database
):
    clock = Clock(DAY)
    server = start_app(clock, limit_user_rpm=2)
    with local_client(server.url) as http:
        worst, cost = probe(http, clock, database)  # the RPM window's first turn
        # Room for one turn's worst case and no more: once it has cost something, a second
        # turn does not fit.
        put = http.put(
            "/api/admin/users/dev/budget", json={"daily_usd": usd(worst + cost // 2)}, headers=ADMIN
        )
        assert put.status_code == 200, put.text
        keyed = {"Idempotency-Key": "retry-me"}
        first = http.post("/api/chat/messages", json={"message": "hi"}, headers=keyed)
        assert first.status_code == 202, first.text
        message_id = first.json()["message_id"]
        read_sse(http, "GET", first.json()["stream_url"])
        settled(database, message_id)
        before, sent = counts(database), len(fake.requests)

        # The budget is spent and the minute's two turns are used: a retry is no turn.
        again = http.post("/api/chat/messages", json={"message": "hi"}, headers=keyed)
        assert again.status_code == 202, again.text
        assert accepted(again.json()) == accepted(first.json())
        assert counts(database) == before and len(fake.requests) == sent

        # A new key is a new turn: refused, with nothing saved, the key left unused.
        refused = http.post(
            "/api/chat/messages", json={"message": "hi"}, headers={"Idempotency-Key": "new"}
        )
        assert refused.status_code == 429, refused.text  # the minute's third turn
        assert counts(database) == before and len(fake.requests) == sent


def test_a_keyed_turn_over_budget_leaves_its_key_unused(start_app, fake, database):
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal("0.000001"))
    with local_client(server.url) as http:
        keyed = {"Idempotency-Key": "k-402"}
        refused = http.post("/api/chat/messages", json={"message": "hi"}, headers=keyed)
        assert refused.status_code == 402, refused.text
        assert counts(database) == {"messages": 0, "keys": 0, "reservations": 0}
        assert fake.requests == []
        # Once the budget allows it, the same key starts the turn.
        put = http.put("/api/admin/users/dev/budget", json={"daily_usd": 1}, headers=ADMIN)
        assert put.status_code == 200, put.text
        started = http.post("/api/chat/messages", json={"message": "hi"}, headers=keyed)
        assert started.status_code == 202, started.text
        read_sse(http, "GET", started.json()["stream_url"])
        assert reservations(database)[0]["id"] == started.json()["message_id"]


def test_an_eventsource_resume_reserves_nothing_and_is_no_turn(start_app, fake, database):
    fake.enqueue(Behaviour(tokens=[f"t{i} " for i in range(10)], delay=0.05))
    server = start_app(Clock(DAY), limit_user_rpm=1, limit_user_concurrent=1)
    params = {"message": "hi"}
    with local_client(server.url) as http:
        with http.stream("GET", "/api/chat/stream", params=params) as response:
            lines = response.iter_lines()
            first_id = next(line for line in lines if line.startswith("id: "))[4:]
        # The reply is still live (the user's one live reply) and the minute's turn is used:
        # the reconnect is neither a turn nor a second live reply.
        rest = read_sse(
            http, "GET", "/api/chat/stream", params=params, headers={"Last-Event-ID": first_id}
        )
        assert rest[-1].event == "done"
        end = http.get("/api/chat/stream", params=params, headers={"Last-Event-ID": rest[-1].id})
        assert end.status_code == 204
        assert len(reservations(database)) == 1
        assert len(fake.requests) == 1
        # A new turn (no Last-Event-ID) is one, and the minute's is used.
        assert http.get("/api/chat/stream", params=params).status_code == 429
        wait_for(lambda: reservations(database)[0]["state"] != "held", what="the settlement")


def test_simultaneous_tries_with_one_key_leave_one_reservation(start_app, fake, database):
    fake.default = Behaviour(tokens=["x", "y", "z"], delay=0.05)
    server = start_app(Clock(DAY), budget_user_daily_usd=Decimal(1))
    tries = 6
    barrier = threading.Barrier(tries)

    def post(_: int) -> dict:
        with local_client(server.url, timeout=30) as http:
            barrier.wait(timeout=60)
            response = http.post(
                "/api/chat/messages", json={"message": "hi"}, headers={"Idempotency-Key": "one"}
            )
            assert response.status_code == 202, response.text
            return response.json()

    with concurrent.futures.ThreadPoolExecutor(tries) as pool:
        answers = list(pool.map(post, range(tries)))
    assert all(accepted(answer) == accepted(answers[0]) for answer in answers)
    # The tries that lost the key gave their reservations back: one turn, one reservation.
    settled(database, answers[0]["message_id"])
    assert [row["id"] for row in reservations(database)] == [answers[0]["message_id"]]
    assert len(fake.requests) == 1
