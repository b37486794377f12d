"""A turn's write on PostgreSQL as one call of `start_turn()` (migration 20,
app/storage/turn_call.py): one round trip, counted on the wire; refused with nothing written;
behind the same advisory lock a job's reservation takes from Python. PostgreSQL only
(TEST_POSTGRES_URL); the limits themselves are the budget tests' (tests/billing/), which run
every turn through it on PostgreSQL, and the two-process race is tests/billing/
test_spend_processes.py's."""

from __future__ import annotations

import asyncio
import os

import pytest
from databases import DatabaseURL

from app.storage.budgets import USER_LOCK_CLASS, Limits, Terms
from app.storage.database import open_database
from app.storage.idempotency import Claim
from app.storage.replies import TurnIds
from app.storage.store import Store
from app.storage.writer import WriteRefused
from bench.round_trips import Proxy, RoundTrips
from tests.support import DatabaseHandle, migrated_store, run_async, wait_for

pytestmark = pytest.mark.skipif(
    not os.environ.get("TEST_POSTGRES_URL"), reason="PostgreSQL only: set TEST_POSTGRES_URL"
)

DAY, MONTH = "2026-12-07", "2026-12"
EVERY_LIMIT = Limits(daily=1000, monthly=5000, global_daily=10_000, concurrent=2)


def _terms(ids: TurnIds, amount: int, limits: Limits = EVERY_LIMIT) -> Terms:
    return Terms(
        message_id=ids.message_id,
        user_id="ann",
        day=DAY,
        month=MONTH,
        amount=amount,
        limits=limits,
        overrides=True,
    )


def _turn(store: Store, ids: TurnIds, amount: int, *, claim: Claim | None = None):
    return store.replies.start_turn(
        ids=ids,
        user_id="ann",
        agent="chat",
        title="q",
        user_content="q",
        requested_model="openai/gpt-4o",
        temperature=0.7,
        claim=claim,
        reservation=_terms(ids, amount),
    )


def _rows(database: DatabaseHandle, ids: TurnIds) -> tuple[int, int, int]:
    def count(sql: str, id_: str) -> int:
        return database.query(sql, id=id_)[0]["n"]

    return (
        count("SELECT count(*) AS n FROM conversations WHERE id = :id", ids.conversation_id),
        count(
            "SELECT count(*) AS n FROM messages WHERE conversation_id = :id", ids.conversation_id
        ),
        count("SELECT count(*) AS n FROM budget_reservations WHERE id = :id", ids.message_id),
    )


def test_a_gated_turn_is_one_round_trip_and_a_refused_one_writes_nothing(database):
    url = DatabaseURL(database.url)
    trips = RoundTrips()
    proxy = Proxy((url.hostname, url.port or 5432), trips.watch)
    proxied = str(url.replace(hostname="127.0.0.1", port=proxy.port))

    async def scenario() -> tuple[list[int], TurnIds, TurnIds]:
        counts = []
        async with migrated_store(proxied) as store:
            first, second = TurnIds.allocate(None), TurnIds.allocate(None)
            await _turn(store, first, 400)  # asyncpg prepares the call: once per connection
            before = trips.count
            await _turn(store, second, 400)
            counts.append(trips.count - before)
            refused = TurnIds.allocate(None)
            before = trips.count
            with pytest.raises(WriteRefused):  # 800 reserved today: 400 more is past 1000
                await _turn(store, refused, 400)
            counts.append(trips.count - before)
            return counts, second, refused

    try:
        counts, written, refused = run_async(scenario())
    finally:
        proxy.close()
    # The lock, the check, the reservation, the conversation and both messages were seven
    # (BEGIN and COMMIT included), and the pool's reset on release one more.
    assert counts == [1, 1]
    assert _rows(database, written) == (1, 2, 1)
    assert _rows(database, refused) == (0, 0, 0)


def test_a_key_used_twice_fails_the_second_call_whole(database):
    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            ids = TurnIds.allocate(None)
            claim = Claim(
                user_id="ann",
                key="k1",
                fingerprint="f",
                conversation_id=ids.conversation_id,
                user_message_id=ids.user_message_id,
                message_id=ids.message_id,
            )
            await _turn(store, ids, 10, claim=claim)
            again = TurnIds.allocate(None)
            with pytest.raises(Exception, match="idempotency_keys"):
                await _turn(store, again, 10, claim=claim)
            assert _rows(database, again) == (0, 0, 0)

    run_async(scenario())


def test_the_call_waits_for_the_lock_a_jobs_reservation_takes(database):
    """A job's reservation takes the user's advisory lock as a step of its own, from Python
    (app/storage/budgets.py); the function must take the same one, or the two could both
    reserve the last of a budget."""

    async def scenario() -> None:
        async with migrated_store(database.url) as store:
            ids = TurnIds.allocate(None)
            held = asyncio.get_running_loop().create_future()
            release = asyncio.Event()

            async def hold_the_lock() -> None:
                other = await open_database(database.url, max_size=1)
                try:
                    async with other.transaction():
                        await other.execute(
                            f"SELECT pg_advisory_xact_lock({USER_LOCK_CLASS}, hashtext('ann'))"
                        )
                        held.set_result(None)
                        await release.wait()
                finally:
                    await other.disconnect()

            holder = asyncio.create_task(hold_the_lock())
            await held
            turn = asyncio.create_task(_turn(store, ids, 10))
            await asyncio.to_thread(
                wait_for,
                lambda: database.query(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ),
                what="the turn's call waiting for the user's lock",
            )
            assert not turn.done()
            release.set()
            await holder
            await turn
            assert _rows(database, ids) == (1, 2, 1)

    run_async(scenario())
