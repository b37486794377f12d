"""Spend control across real server processes sharing the suite's database (SQLite file or
PostgreSQL): concurrent turns never overshoot a budget, live replies are counted across
processes, and SIGTERM, a crash and a restart leave no reservation held."""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from app.dev.simulator import Behaviour
from tests.billing.budget_support import ADMIN, ADMIN_TOKEN, reservation, settled, turn, usd
from tests.support import ServerProcess, local_client, read_sse, serve_process, wait_for

# Real server processes: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

TURNS = 60
FIT = 10


def server_process(database, fake_url: str, tmp_path: Path, **settings: str):
    """`python -m app serve` on the suite's database (tests/support.py's `serve_process`)."""
    return serve_process(
        tmp_path=tmp_path,
        database_url=database.url,
        fake_url=fake_url,
        ADMIN_TOKEN=ADMIN_TOKEN,
        GENERATION_LOOKUP_TIMEOUT="5",
        UPSTREAM_READ_TIMEOUT="30",
        # As in every test app (tests/conftest.py): a title's upstream call would take the
        # fake's scripted costs, which here are every reply's worst case, and its requests.
        AUTO_TITLES="false",
        **settings,
    )


async def _turns(urls: list[str], count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as http:
        return await asyncio.gather(
            *(
                http.post(f"{urls[i % len(urls)]}/api/chat/messages", json={"message": "hi"})
                for i in range(count)
            )
        )


def test_concurrent_turns_on_two_processes_never_overshoot_the_budget(
    database, fake, fake_url, tmp_path
):
    with (
        server_process(database, fake_url, tmp_path) as first,
        server_process(database, fake_url, tmp_path) as second,
        local_client(first.url) as http,
    ):
        probe = turn(http)
        read_sse(http, "GET", probe.json()["stream_url"])
        row = settled(database, probe.json()["message_id"])
        worst, spent = row["reserved_picousd"], row["amount_picousd"]
        # Every turn costs its whole reservation: settling one makes no room for another.
        fake.default = Behaviour(cost=Decimal(worst) / 10**12)
        limit = spent + FIT * worst + worst // 2
        assert (
            http.put(
                "/api/admin/users/dev/budget", json={"daily_usd": usd(limit)}, headers=ADMIN
            ).status_code
            == 200
        )
        sent = len(fake.requests)

        responses = asyncio.run(_turns([first.url, second.url], TURNS))

        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202] * FIT + [402] * (TURNS - FIT), statuses
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 402} == {
            "budget_exceeded"
        }
        for response in responses:
            if response.status_code == 202:
                settled(database, response.json()["message_id"])
        assert len(fake.requests) - sent == FIT
        [total] = database.query("SELECT sum(amount_picousd) AS total FROM budget_reservations")
        assert total["total"] <= limit


def test_live_replies_are_counted_across_processes(database, fake, fake_url, tmp_path):
    fake.default = Behaviour(tokens=["a", "b", "c"], stall_after=1)  # live until stopped
    limits = {"LIMIT_USER_CONCURRENT": "2"}
    with (
        server_process(database, fake_url, tmp_path, **limits) as first,
        server_process(database, fake_url, tmp_path, **limits) as second,
        local_client(first.url) as a,
        local_client(second.url) as b,
    ):
        one, two = turn(a), turn(b)
        assert (one.status_code, two.status_code) == (202, 202)
        for client in (a, b):
            refused = turn(client)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limited"
            assert refused.json()["error"]["limit"] == "concurrent_replies"
            assert refused.headers["RateLimit-Limit"] == "2"
            assert refused.headers["RateLimit-Remaining"] == "0"
            assert int(refused.headers["Retry-After"]) > 0
            assert int(refused.headers["RateLimit-Reset"]) > 0
        assert a.get("/api/me/usage").json()["live_replies"] == 2

        a.post(f"/api/messages/{one.json()['message_id']}/stop")
        three = turn(b)
        assert three.status_code == 202
        for client, reply in ((b, two), (b, three)):
            client.post(f"/api/messages/{reply.json()['message_id']}/stop")


def _live_turn(server: ServerProcess, database) -> str:
    """A turn whose reply streams until stopped, once its generation id is saved (what its
    cost is looked up by after the process is gone)."""
    with local_client(server.url) as http:
        message_id = turn(http).json()["message_id"]
    wait_for(
        lambda: database.query(
            "SELECT 1 FROM generations WHERE message_id = :id AND generation_id IS NOT NULL",
            id=message_id,
        ),
        what="the generation id saved",
    )
    return message_id


def test_sigterm_ends_the_reservation_and_a_restart_settles_it(database, fake, fake_url, tmp_path):
    fake.default = Behaviour(tokens=["a", "b", "c"], stall_after=1)
    quick = {"SHUTDOWN_GRACE": "0.5"}
    with server_process(database, fake_url, tmp_path, **quick) as server:
        message_id = _live_turn(server, database)
        server.stop(signal.SIGTERM)
    row = reservation(database, message_id)
    assert row["ended_at"] is not None
    with server_process(database, fake_url, tmp_path, **quick):
        row = settled(database, message_id)
    [generation] = database.query(
        "SELECT cost_picousd, cost_source FROM generations WHERE message_id = :id", id=message_id
    )
    assert generation["cost_source"] == "generation"
    assert (row["state"], row["amount_picousd"]) == ("settled", generation["cost_picousd"])


def test_a_crash_leaves_the_reservation_to_the_orphan_sweep(database, fake, fake_url, tmp_path):
    fake.default = Behaviour(tokens=["a", "b", "c"], stall_after=1)
    with server_process(database, fake_url, tmp_path) as server:
        message_id = _live_turn(server, database)
        server.stop(signal.SIGKILL)
    row = reservation(database, message_id)
    assert (row["state"], row["ended_at"]) == ("held", None)
    with server_process(database, fake_url, tmp_path, STALE_REPLY_AFTER="0.5"):
        row = settled(database, message_id)
    [generation] = database.query(
        "SELECT cost_picousd, cost_source FROM generations WHERE message_id = :id", id=message_id
    )
    assert generation["cost_source"] == "generation"
    assert (row["state"], row["amount_picousd"]) == ("settled", generation["cost_picousd"])
