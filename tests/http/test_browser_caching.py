"""What prompt caching saved, on the page (issue 34), in a real headless Chromium against a real
server and the simulator's Anthropic-style cache: beside each reply's cost the amount the API
reports, the conversation's total in its header, the same after a reload; nothing on a model
that has no cache; and the costs page's "Saved by caching" column. axe-core on each state;
screenshots at desktop size and 375 px wide in `test-artifacts/screenshots/`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.http import test_browser
from tests.http.test_browser import SCREENSHOTS, STREAM_TIMEOUT, assistant, open_conversation_id
from tests.http.test_browser_daily_use import DESKTOP, accessible
from tests.http.test_browser_models import choose
from tests.http.test_prompt_caching import GPT4O, SONNET, agents_file, saved, usd, user_message
from tests.support import local_client

pytestmark = pytest.mark.any_database

browser, page = test_browser.browser, test_browser.page
NARROW = {"width": 375, "height": 812}
ADMIN = "admin-token-for-the-caching-page"


def shown(amount: float) -> str:
    """As the page formats an amount (app.js `formatUsd`: six places, the double's rounding)."""
    return f"${amount:.6f}"


def both_sizes(page: Page, name: str) -> None:
    """Screenshots of this state at desktop size and 375 px wide (nothing wider than it), each
    checked with axe-core; the viewport is left as it was."""
    before = page.viewport_size
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for size, label in ((DESKTOP, "desktop"), (NARROW, "375")):
        page.set_viewport_size(size)
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
        page.screenshot(path=SCREENSHOTS / f"{name}-{label}.png", full_page=size is NARROW)
        accessible(page, f"{name} ({label})")
    page.set_viewport_size(before)


def read_conversation(url: str, conversation_id: str) -> dict:
    with local_client(url) as http:
        return http.get(f"/api/conversations/{conversation_id}").json()


def converse(page: Page, turns: int) -> None:
    for turn in range(1, turns + 1):
        page.get_by_test_id("composer-input").fill(user_message(turn))
        page.get_by_test_id("composer-input").press("Enter")
        expect(page.locator('[data-testid="message"][data-role="assistant"]')).to_have_count(turn)
        expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)


def expect_savings(page: Page, conversation: dict) -> None:
    """Each reply shows what the conversation's read reports it saved, where it saved (a first
    turn's cache write costs more than it saves: nothing said); the header the total."""
    replies = [m for m in conversation["messages"] if m["role"] == "assistant"]
    for index, reply in enumerate(replies):
        meta = assistant(page, index)
        expect(meta.get_by_test_id("message-cost")).to_have_text(shown(reply["cost_usd"]))
        saving = meta.get_by_test_id("message-cache-saved")
        if reply["cache_saved_usd"] > 0:
            expect(saving).to_have_text(f"saved {shown(reply['cache_saved_usd'])} by caching")
            exact = f"${reply['cache_saved_usd']:.12f}".rstrip("0")  # the title's exact amount
            expect(saving).to_have_attribute("title", re.compile(re.escape(f"cost {exact} less")))
        else:
            expect(saving).to_be_hidden()
    total = conversation["total_cache_saved_usd"]
    expect(page.get_by_test_id("total-cost")).to_have_text(shown(conversation["total_cost_usd"]))
    expect(page.get_by_test_id("total-cache-saved")).to_have_text(
        f"saved {shown(total)} by caching"
    )


@pytest.fixture
def app_url(start_server, tmp_path: Path) -> str:
    # The chat agent on Claude Sonnet 4 (the simulator caches it as Anthropic does: it needs
    # breakpoints), with a system prompt long enough to be cached from the first turn; GPT-4o,
    # which the simulator gives no cache, allowed beside it.
    agents = agents_file(tmp_path, extra=f'allowed_models = ["{GPT4O}"]', history=20)
    return start_server(agents_file=agents, admin_token=ADMIN).url


def test_the_page_shows_what_caching_saved_beside_each_cost_and_in_the_header(page, app_url, fake):
    page.goto(app_url)
    converse(page, 3)
    conversation = read_conversation(app_url, open_conversation_id(page))

    # What the API reports is what the simulator's prices say: turn 1 writes the cache (a
    # negative saving), turns 2 and 3 read it.
    generations = sorted(fake.generations.values(), key=lambda g: int(g.id.rsplit("-", 1)[1]))
    replies = [m for m in conversation["messages"] if m["role"] == "assistant"]
    assert [r["model"] for r in replies] == [SONNET] * 3
    assert [r["cache_saved_usd"] for r in replies] == [
        usd(saved(g.cached_tokens, g.cache_write_tokens)) for g in generations
    ]
    assert replies[0]["cache_saved_usd"] < 0 < replies[1]["cache_saved_usd"]
    assert replies[2]["cache_saved_usd"] > 0 and conversation["total_cache_saved_usd"] > 0

    # Live: each reply's saving arrived with its `done`, the header's total after it.
    expect_savings(page, conversation)
    both_sizes(page, "caching-saved")

    # Read back: the same.
    page.reload()
    expect(page.locator('[data-testid="message"][data-role="assistant"]')).to_have_count(3)
    expect_savings(page, conversation)

    # A model with no cache: nothing said, beside the reply nor in the header.
    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("total-cache-saved")).to_be_hidden()
    choose(page, GPT4O)
    converse(page, 2)
    other = read_conversation(app_url, open_conversation_id(page))
    assert [m["cache_saved_usd"] for m in other["messages"] if m["role"] == "assistant"] == [0, 0]
    expect(assistant(page).get_by_test_id("message-model")).to_have_text(GPT4O)
    expect(page.get_by_test_id("message-cache-saved")).to_have_count(2)
    for index in range(2):
        expect(assistant(page, index).get_by_test_id("message-cache-saved")).to_be_hidden()
    expect(page.get_by_test_id("total-cache-saved")).to_be_hidden()
    both_sizes(page, "caching-none")

    # Back to the first conversation: its savings again.
    page.get_by_test_id("conversation-item").nth(1).get_by_role("button").first.click()
    expect(page.get_by_test_id("total-cache-saved")).to_have_text(
        f"saved {shown(conversation['total_cache_saved_usd'])} by caching"
    )


def test_the_costs_page_shows_what_caching_saved_beside_the_cost(page, app_url):
    with local_client(app_url, timeout=30) as http:
        conversation_id = None
        for turn in (1, 2):
            sent = {"message": user_message(turn), "conversation_id": conversation_id}
            reply = http.post("/api/chat/messages", json={k: v for k, v in sent.items() if v})
            conversation_id = reply.json()["conversation_id"]
            with http.stream("GET", reply.json()["stream_url"]) as response:
                response.read()  # to its end: the reply settled
    page.goto(f"{app_url}/admin/costs")
    page.get_by_test_id("costs-token").fill(ADMIN)
    page.get_by_test_id("costs-load").click()
    row = page.get_by_test_id("costs-row")
    expect(row).to_have_count(1)
    with local_client(app_url) as http:
        report = http.get(
            "/api/admin/costs",
            params={
                "from": page.get_by_test_id("costs-from").input_value(),
                "to": page.get_by_test_id("costs-to").input_value(),
                "group_by": "day,model",
            },
            headers={"Authorization": f"Bearer {ADMIN}"},
        ).json()
    [figures] = report["rows"]
    assert figures["model"] == SONNET and float(figures["cache_saved_usd"]) > 0
    headers = page.locator('[data-testid="costs-table"] th').all_inner_texts()
    cells = row.locator("td").all_inner_texts()
    columns = dict(zip(headers, cells, strict=True))
    assert columns["Cost (USD)"] == f"${figures['cost_usd']}"
    assert columns["Saved by caching"] == f"${figures['cache_saved_usd']}"
    expect(page.get_by_test_id("costs-saved")).to_have_text(
        f"· saved ${report['totals']['cache_saved_usd']} by caching"
    )
    both_sizes(page, "costs-caching")
