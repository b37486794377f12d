"""Helpers of the budget tests: a clock the test moves, turns, and the reservation rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.support import DatabaseHandle, read_sse, wait_for

ADMIN_TOKEN = "admin-secret-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Turns probed for their worst case are made on a day no test counts in.
PROBE_DAY = datetime(2020, 1, 15, 12, tzinfo=UTC)


@dataclass
class Clock:
    """The app's UTC clock for budget periods; the test sets `at`."""

    at: datetime

    def __call__(self) -> datetime:
        return self.at


def turn(http: httpx.Client, message: str = "hi", **body: Any) -> httpx.Response:
    """A two-step turn: `202` and the ids, or the refusal."""
    return http.post("/api/chat/messages", json={"message": message, **body})


def finished_turn(http: httpx.Client, message: str = "hi") -> str:
    """A two-step turn read to its final event; the reply's message id."""
    response = turn(http, message)
    assert response.status_code == 202, response.text
    read_sse(http, "GET", response.json()["stream_url"])
    return response.json()["message_id"]


def reservation(database: DatabaseHandle, message_id: str) -> dict[str, Any]:
    [row] = database.query("SELECT * FROM budget_reservations WHERE id = :id", id=message_id)
    return row


def settled(database: DatabaseHandle, message_id: str) -> dict[str, Any]:
    """The reservation once it is no longer held."""
    return wait_for(
        lambda: (row := reservation(database, message_id))["state"] != "held" and row,
        what=f"the reservation of {message_id} to settle",
    )


def probe(http: httpx.Client, clock: Clock, database: DatabaseHandle) -> tuple[int, int]:
    """What a plain "hi" turn reserves and what it then costs, in pico-dollars: (worst case,
    real cost), from a turn made on PROBE_DAY. The real cost is far below the worst case."""
    at, clock.at = clock.at, PROBE_DAY
    try:
        row = settled(database, finished_turn(http))
    finally:
        clock.at = at
    assert row["amount_picousd"] < row["reserved_picousd"]
    return row["reserved_picousd"], row["amount_picousd"]


def set_budget(http: httpx.Client, **limits: Any) -> None:
    response = http.put("/api/admin/users/dev/budget", json=limits, headers=ADMIN)
    assert response.status_code == 200, response.text


def usd(picos: int) -> float:
    return picos / 10**12
