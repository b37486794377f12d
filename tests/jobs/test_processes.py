"""Jobs across real server processes on the suite's database and one Redis: concurrent jobs on
two processes never overshoot a key's budget, a key's rate is one window for both, and a job
whose process was killed mid-stream is settled by another from the generation record."""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal

import httpx
import openai

from app.dev.simulator import Behaviour
from tests.billing.test_spend_processes import server_process
from tests.jobs.conftest import ADMIN
from tests.jobs.test_completions import ledger, reservation_of
from tests.support import wait_for

HI = [{"role": "user", "content": "hi"}]
JOBS = 40
FIT = 8


def _key(url: str, **fields) -> dict:
    response = httpx.post(
        f"{url}/api/admin/keys", json={"label": "race", "models": "*", **fields}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _jobs(urls: list[str], key: str, count: int) -> list[object]:
    clients = [
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
        for url in urls
    ]

    async def one(i: int) -> object:
        try:
            return await clients[i % len(clients)].chat.completions.create(
                model="openai/gpt-4o", messages=HI, max_tokens=50
            )
        except openai.APIStatusError as exc:
            return exc

    try:
        return await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        for client in clients:
            await client.close()


def test_jobs_on_two_processes_never_overshoot_a_keys_budget_nor_its_rate(
    database, fake, fake_url, tmp_path, redis_url
):
    shared = {"REDIS_URL": redis_url}
    with (
        server_process(database, fake_url, tmp_path, **shared) as first,
        server_process(database, fake_url, tmp_path, **shared) as second,
    ):
        probe = _key(first.url)
        with openai.OpenAI(base_url=f"{first.url}/v1", api_key=probe["key"]) as client:
            answer = client.chat.completions.create(
                model="openai/gpt-4o", messages=HI, max_tokens=50
            )
        worst = reservation_of(database, ledger(database, answer.id)["message_id"])[
            "reserved_picousd"
        ]
        # Every job costs its whole reservation: settling one makes no room for another.
        fake.default = Behaviour(cost=Decimal(worst) / 10**12)
        limit = FIT * worst + worst // 2
        budgeted = _key(first.url, daily_usd=float(Decimal(limit) / 10**12))
        sent = len(fake.requests)

        results = asyncio.run(_jobs([first.url, second.url], budgeted["key"], JOBS))

        refused = [r for r in results if isinstance(r, openai.APIStatusError)]
        assert len(results) - len(refused) == FIT, [getattr(r, "status_code", 200) for r in results]
        assert {(r.status_code, r.code) for r in refused} == {(402, "budget_exceeded")}
        assert len(fake.requests) - sent == FIT
        for result in results:
            if not isinstance(result, openai.APIStatusError):
                reservation_of(database, ledger(database, result.id)["message_id"])
        [total] = database.query(
            "SELECT sum(amount_picousd) AS total FROM budget_reservations WHERE user_id = :k",
            k=f"key:{budgeted['id']}",
        )
        assert total["total"] <= limit

        fake.default = Behaviour()
        paced = _key(first.url, rpm=5)
        results = asyncio.run(_jobs([first.url, second.url], paced["key"], 12))
        limited = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(results) - len(limited) == 5
        assert all(int(r.response.headers["retry-after"]) >= 1 for r in limited)


def test_a_job_whose_process_died_is_settled_by_another(database, fake, fake_url, tmp_path):
    fake.default = Behaviour(tokens=["a", "b", "c"], stall_after=1)  # live until cut
    with server_process(database, fake_url, tmp_path) as server:
        key = _key(server.url)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key["key"], max_retries=0)
        stream = client.chat.completions.create(model="openai/gpt-4o", messages=HI, stream=True)
        generation_id = next(iter(stream)).id
        wait_for(
            lambda: database.query(
                "SELECT 1 FROM generations WHERE generation_id = :id", id=generation_id
            ),
            what="the job's generation id saved",
        )
        server.send(signal.SIGKILL)  # a crash: the whole process group, no shutdown
        stream.close()
        client.close()
    with server_process(database, fake_url, tmp_path, STALE_REPLY_AFTER="0.5"):
        row = ledger(database, generation_id)
        settled = reservation_of(database, row["message_id"])
    assert row["status"] == "cancelled" and row["cost_source"] == "generation"
    assert row["cost_picousd"] == round(fake.generations[generation_id].cost * 10**12)
    assert (settled["state"], settled["amount_picousd"]) == ("settled", row["cost_picousd"])
