"""Costs sum exactly and timestamps come back as UTC with an offset, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

import httpx

from app.storage.database import is_sqlite
from app.storage.ledger import GenerationRecord
from app.storage.tables import new_id, now
from tests.support import local_client, migrated_store, read_sse, save_reply

COST = Decimal("0.0000001234")  # a few tokens of a cheap model: a fraction of a nano-dollar matters
TURNS, GENERATIONS_PER_TURN = 4, 500


def _decimal_json(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


def test_thousands_of_small_costs_sum_exactly(database, start_server):
    async def record_costs() -> str:
        conversation_id = None
        async with migrated_store(database.url) as store:
            for _ in range(TURNS):
                records = [
                    GenerationRecord(
                        id=new_id(),
                        attempt=attempt,
                        requested_model="openai/gpt-4o",
                        started_at=now(),
                        status="complete",
                        cost=COST,
                        cost_source="usage",
                        ended_at=now(),
                    )
                    for attempt in range(GENERATIONS_PER_TURN)
                ]
                ids = await save_reply(store, records=records, conversation_id=conversation_id)
                conversation_id = ids.conversation_id
        return conversation_id

    conversation_id = asyncio.run(record_costs())
    server = start_server()

    with local_client(server.url) as http:
        conversation = _decimal_json(http.get(f"/api/conversations/{conversation_id}"))
        listed = _decimal_json(http.get("/api/conversations"))["conversations"]

    total = COST * TURNS * GENERATIONS_PER_TURN
    assert total == Decimal("0.0002468")
    assert conversation["total_cost_usd"] == total
    assert listed[0]["id"] == conversation_id and listed[0]["total_cost_usd"] == total
    replies = [m for m in conversation["messages"] if m["role"] == "assistant"]
    assert [m["cost_usd"] for m in replies] == [COST * GENERATIONS_PER_TURN] * TURNS
    stored = database.query("SELECT SUM(cost_picousd) AS picos FROM generations")
    assert stored == [{"picos": 123_400 * TURNS * GENERATIONS_PER_TURN}]


def _utc(text: str) -> datetime:
    assert text.endswith("+00:00"), text
    return datetime.fromisoformat(text)


def test_timestamps_are_stored_in_utc_and_returned_with_an_offset(database, start_server, fake):
    if not is_sqlite(database.url):
        # A server or session time zone far from UTC must change nothing we store or return.
        name = database.query("SELECT current_database() AS name")[0]["name"]
        database.query(f"ALTER DATABASE \"{name}\" SET timezone TO 'Pacific/Chatham'")
    server = start_server()
    before = datetime.now(UTC)
    with local_client(server.url) as http:
        events = read_sse(http, "POST", "/api/chat", json={"message": "what time is it?"})
        conversation_id = events[0].data["conversation_id"]
        conversation = http.get(f"/api/conversations/{conversation_id}").json()
    after = datetime.now(UTC)

    created = _utc(conversation["created_at"])
    stamps = [created, _utc(conversation["updated_at"])] + [
        _utc(m["created_at"]) for m in conversation["messages"]
    ]
    assert all(before <= stamp <= after for stamp in stamps), (before, stamps, after)

    raw = database.query("SELECT created_at FROM conversations")[0]["created_at"]
    if is_sqlite(database.url):
        # SQLite has no time zones: the text is UTC wall time, not the machine's local time.
        assert datetime.fromisoformat(raw).replace(tzinfo=UTC) == created
    else:
        assert raw == created
        column = database.query(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'conversations' AND column_name = 'created_at'"
        )
        assert column == [{"data_type": "timestamp with time zone"}]
