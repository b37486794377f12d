"""A job's spend, as chat's: the worst case reserved before the upstream call, settled to the
billed cost however the job ends (a client that leaves mid-stream, a crash), the key's
concurrency counted in the database."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from decimal import Decimal

import openai
import pytest

from app.core.money import to_picos
from app.dev.simulator import Behaviour, Generation
from app.storage.tables import budget_reservations, generations, new_id, now
from tests.jobs.conftest import make_key, sdk
from tests.jobs.test_completions import ledger, reservation_of
from tests.support import migrated_store, run_async, wait_for

HI = [{"role": "user", "content": "hi"}]


def _at(value) -> datetime:
    """A timestamp as either database's driver returns it from raw SQL (SQLite: text)."""
    return datetime.fromisoformat(str(value))


def test_a_client_that_leaves_mid_stream_is_billed_exactly_what_was_generated(
    client, fake, database
):
    fake.default = Behaviour(tokens=[f" t{i}" for i in range(300)], delay=0.01)
    stream = client.chat.completions.create(model="openai/gpt-4o", messages=HI, stream=True)
    read = []
    for chunk in stream:
        read.append(chunk)
        if len(read) == 6:
            break
    stream.close()
    generation_id = read[0].id
    row = ledger(database, generation_id)
    generation = fake.generations[generation_id]
    assert generation.cancelled and generation.completion_tokens < 300
    assert row["status"] == "cancelled" and row["cost_source"] == "generation"
    assert row["cost_picousd"] == to_picos(generation.cost) > 0
    assert row["completion_tokens"] == generation.completion_tokens
    settled = reservation_of(database, row["message_id"])
    assert settled["state"] == "settled"
    assert settled["amount_picousd"] == row["cost_picousd"] < settled["reserved_picousd"]


def test_jobs_in_flight_hold_their_worst_case_and_the_concurrency_limit(server, fake, database):
    """The key's concurrency and budget see a job in flight (held at its worst case) from any
    process: the next one is refused until it ends and settles at its real, smaller cost."""
    probe = make_key(server)
    with sdk(server, probe["key"]) as client:
        answer = client.chat.completions.create(model="openai/gpt-4o", messages=HI, max_tokens=50)
    worst = reservation_of(database, ledger(database, answer.id)["message_id"])["reserved_picousd"]

    # Room for one worst case and a half: a second job in flight would overshoot.
    budget = Decimal(worst * 3 // 2) / 10**12
    single = make_key(server, concurrency=1)
    tight = make_key(server, daily_usd=float(budget))
    resume = threading.Event()
    for key, refusal in ((single, openai.RateLimitError), (tight, openai.APIStatusError)):
        resume.clear()
        fake.enqueue(Behaviour(tokens=["a", "b", "c"], pause_after=1, resume=resume))
        with sdk(server, key["key"]) as client:
            stream = client.chat.completions.create(
                model="openai/gpt-4o", messages=HI, max_tokens=50, stream=True
            )
            first = next(iter(stream))
            with pytest.raises(refusal) as refused:
                client.chat.completions.create(model="openai/gpt-4o", messages=HI, max_tokens=50)
            assert refused.value.status_code in (402, 429)
            resume.set()
            list(stream)
            reservation_of(database, ledger(database, first.id)["message_id"])
            assert client.chat.completions.create(
                model="openai/gpt-4o", messages=HI, max_tokens=50
            ).choices


def test_the_platforms_daily_budget_counts_jobs_too(jobs_server, fake):
    server = jobs_server(budget_global_daily_usd=Decimal("0.000001"))
    key = make_key(server)
    with sdk(server, key["key"]) as client, pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="openai/gpt-4o", messages=HI, max_tokens=50)
    assert refused.value.status_code == 402 and refused.value.code == "budget_exceeded"
    assert fake.requests == []


def test_a_job_a_dead_process_left_streaming_is_swept_and_settled(jobs_server, fake, database):
    """A crash mid-job: its row stays `streaming`, its heartbeat stops; a live process ends it
    once STALE_REPLY_AFTER has passed, and settles it from the generation record."""
    server = jobs_server(stale_reply_after=1.0)
    key = make_key(server)
    fake.generations["gen-crashed"] = Generation(
        id="gen-crashed",
        model="openai/gpt-4o",
        prompt_tokens=9,
        completion_tokens=40,
        cost=Decimal("0.0000321"),
        cancelled=True,
        ended=True,
    )
    job_id, row_id, long_ago = new_id(), new_id(), now() - timedelta(minutes=5)

    async def crashed() -> None:
        async with migrated_store(database.url) as store:
            await store.writer.write(
                [
                    budget_reservations.insert().values(
                        id=job_id,
                        user_id=f"key:{key['id']}",
                        day=f"{long_ago:%Y-%m-%d}",
                        month=f"{long_ago:%Y-%m}",
                        reserved_picousd=900_000_000,
                        amount_picousd=900_000_000,
                        state="held",
                        created_at=long_ago,
                    ),
                    generations.insert().values(
                        id=row_id,
                        generation_id="gen-crashed",
                        message_id=job_id,
                        conversation_id="",
                        agent="jobs",
                        attempt=1,
                        requested_model="openai/gpt-4o",
                        status="streaming",
                        prompt_tokens=0,
                        completion_tokens=0,
                        reasoning_tokens=0,
                        cached_tokens=0,
                        cost_source="pending",
                        started_at=long_ago,
                        key_id=key["id"],
                        touched_at=long_ago,
                    ),
                ]
            )

    run_async(crashed())
    row = ledger(database, "gen-crashed")
    assert row["status"] == "cancelled" and row["cost_source"] == "generation"
    assert row["cost_picousd"] == to_picos(Decimal("0.0000321"))
    settled = wait_for(
        lambda: (r := reservation_of(database, job_id))["state"] == "settled" and r,
        what="the crashed job's reservation to settle",
    )
    assert settled["amount_picousd"] == row["cost_picousd"]


def test_a_live_long_job_is_not_swept(jobs_server, fake, database):
    """Its heartbeat keeps it live past STALE_REPLY_AFTER: it still holds its key's one slot,
    and ends as it should."""
    server = jobs_server(stale_reply_after=0.6)
    key = make_key(server, concurrency=1)
    resume = threading.Event()
    fake.enqueue(Behaviour(tokens=["a", "b", "c"], pause_after=1, resume=resume))
    with sdk(server, key["key"]) as client:
        stream = client.chat.completions.create(model="openai/gpt-4o", messages=HI, stream=True)
        first = next(iter(stream))
        # Until its heartbeats have carried it past STALE_REPLY_AFTER: the sweeps (every
        # heartbeat, 0.2 s here) have seen it as old by then.
        wait_for(
            lambda: any(
                (_at(r["touched_at"]) - _at(r["started_at"])).total_seconds() > 1.0
                for r in database.query(
                    "SELECT started_at, touched_at FROM generations WHERE generation_id = :id",
                    id=first.id,
                )
            ),
            what="the job's heartbeats",
        )
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="openai/gpt-4o", messages=HI)
        resume.set()
        list(stream)
    row = ledger(database, first.id)
    assert row["status"] == "complete" and row["cost_source"] == "usage"
    assert reservation_of(database, row["message_id"])["amount_picousd"] == row["cost_picousd"]
