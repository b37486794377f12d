"""The admins' cost page (`/admin/costs`) in a real headless Chromium: the token typed in, the
stacked bars and the table drawn from the ledger, the CSV downloaded; a screenshot of each."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.storage.ledger import GenerationRecord
from app.storage.tables import new_id
from tests.http.test_browser import browser, page, screenshot  # noqa: F401 (fixtures)
from tests.support import migrated_store, run_async

# The page over the HTTP API: the database behind it is the HTTP tests' to cover on both.
pytestmark = pytest.mark.any_database

ADMIN = "admin-token-for-the-cost-page"
SPEND = [  # day, model, agent, USD
    ("2026-04-01", "openai/gpt-4o", "chat", "0.0125"),
    ("2026-04-01", "anthropic/claude-3.5-sonnet", "coach", "0.0300"),
    ("2026-04-02", "openai/gpt-4o", "chat", "0.0071"),
    ("2026-04-04", "anthropic/claude-3.5-sonnet", "chat", "0.0450"),
    ("2026-04-04", "openai/gpt-4o", "coach", "0.0020"),
]


async def _seed(url: str) -> None:
    async with migrated_store(url) as store:
        for day, model, agent, usd in SPEND:
            record = GenerationRecord(
                id=new_id(),
                attempt=1,
                requested_model=model,
                model=model,
                started_at=datetime.fromisoformat(f"{day}T12:00:00").replace(tzinfo=UTC),
                status="complete",
                prompt_tokens=100,
                completion_tokens=40,
                cost=Decimal(usd),
                cost_source="usage",
            )
            await store.writer.write(
                store.ledger.generation_steps(
                    records=[record],
                    message_id=new_id(),
                    conversation_id=new_id(),
                    agent=agent,
                    user_id="dev",
                )
            )


def test_the_cost_page_charts_spend_per_day_and_downloads_the_csv(page, start_server, database):  # noqa: F811
    run_async(_seed(database.url))  # Playwright keeps a loop in this thread
    server = start_server(admin_token=ADMIN)
    page.goto(f"{server.url}/admin/costs?from=2026-04-01&to=2026-04-05")
    page.get_by_test_id("costs-token").fill(ADMIN)
    page.get_by_test_id("costs-load").click()

    expect(page.get_by_test_id("costs-total")).to_have_text("$0.096600000000")
    expect(page.get_by_test_id("costs-bar")).to_have_count(5)  # one per day and model
    expect(page.get_by_test_id("costs-row")).to_have_count(5)
    expect(page.get_by_test_id("costs-legend")).to_contain_text("openai/gpt-4o")
    first = page.get_by_test_id("costs-row").first
    expect(first).to_contain_text("2026-04-01")
    expect(first).to_contain_text("$0.030000000000")
    screenshot(page, "costs-by-model", full_page=True)

    # The token is kept for this tab: a reload draws again without asking.
    page.reload()
    expect(page.get_by_test_id("costs-bar")).to_have_count(5)
    page.get_by_test_id("costs-by").select_option("agent")
    page.get_by_test_id("costs-load").click()
    expect(page.get_by_test_id("costs-by-header")).to_have_text("Agent")
    expect(page.get_by_test_id("costs-row")).to_have_count(5)
    screenshot(page, "costs-by-agent", full_page=True)

    with page.expect_download() as download:
        page.get_by_test_id("costs-csv").click()
    assert download.value.suggested_filename == (
        "streamchat-costs-2026-04-01-to-2026-04-05-by-day-agent.csv"
    )
    text = Path(download.value.path()).read_text()
    table = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [(r["day"], r["agent"], r["cost_usd"]) for r in table] == [
        ("2026-04-01", "chat", "0.012500000000"),
        ("2026-04-01", "coach", "0.030000000000"),
        ("2026-04-02", "chat", "0.007100000000"),
        ("2026-04-04", "chat", "0.045000000000"),
        ("2026-04-04", "coach", "0.002000000000"),
    ]


def test_a_wrong_token_says_so_on_the_page(page, start_server):  # noqa: F811
    server = start_server(admin_token=ADMIN)
    page.goto(f"{server.url}/admin/costs")
    page.get_by_test_id("costs-token").fill("not-the-token")
    page.get_by_test_id("costs-load").click()
    expect(page.get_by_test_id("costs-error")).to_be_visible()
    expect(page.get_by_test_id("costs-error")).to_contain_text("Could not load the costs")
