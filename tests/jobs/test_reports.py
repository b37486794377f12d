"""Cost reports gain `group_by=key` and `job`: the seeds' "cost per strategy per day", in JSON
and CSV, exact to the pico-dollar."""

from __future__ import annotations

import csv
import io

from app.billing.reports import usd_text
from app.core.money import to_picos
from tests.jobs.conftest import ADMIN, make_key, sdk
from tests.jobs.test_completions import ledger
from tests.support import local_client

HI = [{"role": "user", "content": "hi"}]


def test_costs_per_key_and_job_in_json_and_csv(server, fake, database):
    enrich, digest = make_key(server, label="enrich"), make_key(server, label="digest")
    spent: dict[tuple[str, str], int] = {}
    for key, job, count in ((enrich, "companies", 2), (enrich, "people", 1), (digest, "daily", 1)):
        with sdk(server, key["key"]) as client:
            for _ in range(count):
                answer = client.chat.completions.create(
                    model="openai/gpt-4o", messages=HI, extra_headers={"X-Job": job}
                )
                cost = ledger(database, answer.id)["cost_picousd"]
                assert cost == to_picos(fake.generations[answer.id].cost)
                spent[(key["id"], job)] = spent.get((key["id"], job), 0) + cost

    with local_client(server.url, headers=ADMIN) as http:
        report = http.get("/api/admin/costs", params={"group_by": "day,key,job"}).json()
        rows = {(row["key"], row["job"]): row for row in report["rows"]}
        assert set(rows) == set(spent)
        for group, picos in spent.items():
            assert rows[group]["cost_usd"] == usd_text(picos)
        assert rows[(enrich["id"], "companies")]["generations"] == 2
        assert report["totals"]["cost_usd"] == usd_text(sum(spent.values()))

        text = http.get("/api/admin/costs", params={"group_by": "job", "format": "csv"}).text
        by_job = {row["job"]: row for row in csv.DictReader(io.StringIO(text))}
        assert by_job["companies"]["cost_usd"] == usd_text(spent[(enrich["id"], "companies")])
        assert set(by_job) == {"companies", "people", "daily"}

        items = http.get(
            "/api/admin/costs", params={"group_by": "generation", "format": "csv"}
        ).text
        lines = list(csv.DictReader(io.StringIO(items)))
        assert {(line["key"], line["job"]) for line in lines} == set(spent)
