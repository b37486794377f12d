"""The database goes away while replies stream, and comes back (docs/api.md: "When the database goes
away"): on PostgreSQL a server of this test's own stopped `-m immediate` (every connection cut)
and started again; on SQLite its file made unavailable (its directory moved away, so no
connection can open it) while another process holds its write lock.

What is promised: callers get `503 database_unavailable` with `Retry-After` (JSON), `/healthz`
503; live replies stream on, and are saved complete, with their exact cost, once it is back
(those that ended meanwhile too); each background loop logs one warning and one info line.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from app.core.money import to_picos
from app.dev.simulator import Behaviour
from bench.postgres import postgres_server
from tests.support import DatabaseHandle, content_of, local_client, read_sse, wait_for

TOKENS = [f"word{i} " for i in range(8)]
COST = Decimal("0.000123456789")  # to the pico-dollar
# Of each kind: ending during the outage, and streaming across it. The simulator waits for a
# paused reply's `resume` in its default thread pool (6 threads at least): more paused replies
# would wait for a thread, not for their event.
REPLIES = 3


@dataclass
class Outage:
    """The test's own database, and how to take it away and bring it back."""

    url: str
    begin: Any
    end: Any


@contextlib.contextmanager
def own_database(tmp_path: Path) -> Iterator[Outage]:
    if os.environ.get("TEST_POSTGRES_URL"):
        # Not the suite's shared server: one of this test's own, to stop.
        with postgres_server() as server:
            yield Outage(server.url, begin=lambda: server.stop("immediate"), end=server.start)
        return
    home = tmp_path / "db"
    home.mkdir()
    path = home / "outage.db"
    held: list[sqlite3.Connection] = []

    def begin() -> None:
        # Another process's write lock (writers wait DATABASE_BUSY_TIMEOUT, then fail), and
        # the file gone from its path (a new connection, as every read takes, cannot open it).
        lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN IMMEDIATE")
        held.append(lock)
        home.rename(tmp_path / "away")

    def end() -> None:
        (tmp_path / "away").rename(home)
        lock = held.pop()
        lock.execute("ROLLBACK")
        lock.close()

    yield Outage(f"sqlite:///{path}", begin=begin, end=end)


def outage_lines(caplog: pytest.LogCaptureFixture) -> dict[str, list[str]]:
    """The outage lines of the background loops (app/core/outage.py), per loop."""
    lines: dict[str, list[str]] = {}
    for record in caplog.records:
        if record.name == "app.core.outage":
            message = record.getMessage()
            what = message.split(": ", 1)[1] if "is back" in message else message.split("): ")[-1]
            what = what.removesuffix(" waits for it").removesuffix(" resumes")
            lines.setdefault(what, []).append(record.levelname)
    return lines


def test_nothing_is_lost_and_callers_get_503(
    tmp_path, fake, start_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with own_database(tmp_path) as outage:
        server = start_server(
            database_url=outage.url,
            database_busy_timeout=0.5,
            database_connect_timeout=2.0,
        )
        across, ending = threading.Event(), threading.Event()
        fake.enqueue(
            *[Behaviour(tokens=TOKENS, pause_after=3, resume=ending, cost=COST)] * REPLIES,
            *[Behaviour(tokens=TOKENS, pause_after=3, resume=across, cost=COST)] * REPLIES,
        )
        with local_client(server.url, timeout=30) as http:
            started = [
                http.post("/api/chat/messages", json={"message": f"q{i}"}).json()
                for i in range(2 * REPLIES)
            ]
            with concurrent.futures.ThreadPoolExecutor(2 * REPLIES) as pool:
                followed = [
                    pool.submit(read_sse, http, "GET", reply["stream_url"]) for reply in started
                ]
                wait_for(lambda: len(fake.requests) >= 2 * REPLIES, what="every reply upstream")

                outage.begin()
                ending.set()  # these replies end while the database is away
                seen = {
                    "turn": http.post("/api/chat", json={"message": "now?", "stream": False}),
                    "list": http.get("/api/conversations"),
                    "healthz": http.get("/healthz"),
                }
                wait_for(
                    lambda: (
                        {
                            "the heartbeat of live replies and the sweep of orphans",
                            "live replies' checkpoints and final writes",
                        }
                        <= set(outage_lines(caplog))
                    ),
                    what="the loops to see the outage",
                )
                outage.end()
                wait_for(
                    lambda: all(len(levels) == 2 for levels in outage_lines(caplog).values()),
                    timeout=20,
                    what="every loop to see the database back",
                )
                across.set()
                streams = [future.result(timeout=30) for future in followed]

            for name, answer in seen.items():
                assert answer.status_code == 503, (name, answer.text)
                assert answer.headers["Retry-After"] == "5", name
                assert answer.headers["content-type"] == "application/json", name
            assert seen["turn"].json()["error"]["code"] == "database_unavailable"
            assert seen["list"].json()["error"]["code"] == "database_unavailable"
            assert seen["healthz"].json()["status"] == "unavailable"

            # Every stream whole, ended `done`; every reply saved complete, its cost exact.
            for events in streams:
                assert content_of(events) == "".join(TOKENS)
                assert events[-1].event == "done", events[-1]
            database = DatabaseHandle(outage.url)
            ids = [reply["message_id"] for reply in started]

            def saved() -> list[dict[str, Any]] | None:
                rows = [
                    database.query("SELECT * FROM messages WHERE id = :id", id=i)[0] for i in ids
                ]
                return rows if all(row["status"] == "complete" for row in rows) else None

            rows = wait_for(saved, what="every reply saved complete")
            assert [row["content"] for row in rows] == ["".join(TOKENS)] * len(ids)
            costs = database.query(
                "SELECT message_id, cost_picousd, cost_source FROM generations"
                " WHERE message_id IN ('" + "','".join(ids) + "')"
            )
            assert sorted(r["message_id"] for r in costs) == sorted(ids)
            assert {(r["cost_picousd"], r["cost_source"]) for r in costs} == {
                (to_picos(COST), "usage")
            }
            # New turns work at once, with no restart.
            assert http.post("/api/chat", json={"message": "back?", "stream": False}).is_success
        server.stop()  # before its database goes for good

    # One warning as it went, one info line as it came back, per loop; no traceback.
    for what, levels in outage_lines(caplog).items():
        assert levels == ["WARNING", "INFO"], what
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info is not None
    ], [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
