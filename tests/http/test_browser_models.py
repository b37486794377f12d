"""The model picker (issue 29) in a real headless Chromium against a real server: pick a model,
send, see it on the reply; switch mid-conversation; regenerate with another model; a model over
the user's budget shown disabled with the reason; the keyboard; axe-core with the picker open.

The chat agent allows four models besides its default (a test agents file: the shipped one
allows none), and the user's daily budget is $0.05: one turn of Claude 3.5 Sonnet (or of
DeepSeek R1, with its long reply allowance) could cost more, one of GPT-4o-mini or MythoMax
cannot. Screenshots at desktop size and 390 px, in the test's tmp dir.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.dev.simulator import Behaviour
from app.settings import DEFAULT_AGENTS_FILE
from tests.http import test_browser
from tests.http.test_browser import (
    EMBEDDING_PAGE,
    STREAM_TIMEOUT,
    assistant,
    conversation,
    open_conversation_id,
    send,
)
from tests.http.test_browser_daily_use import accessible, both_sizes

pytestmark = pytest.mark.any_database

browser, page = test_browser.browser, test_browser.page
MINI = "openai/gpt-4o-mini"
R1 = "deepseek/deepseek-r1"
MYTHOMAX = "gryphe/mythomax-l2-13b"
CLAUDE = "anthropic/claude-3.5-sonnet"
ALLOWED = [MINI, R1, MYTHOMAX, CLAUDE]


@pytest.fixture
def app_url(start_server, tmp_path: Path) -> str:
    shipped = DEFAULT_AGENTS_FILE.read_text(encoding="utf-8")
    allowed = "allowed_models = [" + ", ".join(f'"{m}"' for m in ALLOWED) + "]\n"
    # The chat agent's table and the coach's, each with the allowlist as its first key.
    agents = tmp_path / "agents.toml"
    for table in ("[chat]\n", "[coach]\n"):
        shipped = shipped.replace(table, table + allowed, 1)
    agents.write_text(shipped, encoding="utf-8")
    return start_server(
        agents_file=str(agents),
        openrouter_model=MINI,
        budget_user_daily_usd=Decimal("0.05"),
    ).url


def option(page: Page, model: str):
    return page.locator(f'[data-testid="model-option"][data-model-id="{model}"]')


def choose(page: Page, model: str) -> None:
    page.get_by_test_id("model-button").click()
    expect(page.get_by_test_id("model-picker")).to_be_visible()
    option(page, model).click()
    expect(page.get_by_test_id("model-picker")).to_be_hidden()


def panel_in_view(page: Page) -> bool:
    return page.evaluate(
        """() => {
          const box = (id) => document.querySelector(`[data-testid="${id}"]`)
            .getBoundingClientRect();
          const panel = box('model-picker');
          return panel.top >= 0 && panel.bottom <= box('composer').top + 1;
        }"""
    )


def upstream_models(fake) -> list[str]:
    return [r["body"]["model"] for r in fake.requests]


def test_pick_send_switch_and_regenerate_with_another_model(page, app_url, fake, tmp_path):
    fake.enqueue(
        Behaviour(tokens=["From MythoMax."]),
        Behaviour(tokens=["From mini."]),
        Behaviour(tokens=["Still mini."]),
        Behaviour(tokens=["Again, from MythoMax."]),
    )
    page.goto(app_url)
    button = page.get_by_test_id("model-button")
    # A new chat starts on the agent's default.
    expect(button).to_contain_text("GPT-4o-mini")

    # The picker: recommended first, prices, context, badges, the default marked.
    button.click()
    picker = page.get_by_test_id("model-picker")
    expect(picker).to_be_visible()
    expect(page.get_by_test_id("model-search")).to_be_focused()
    ids = page.get_by_test_id("model-option").evaluate_all("els => els.map(e => e.dataset.modelId)")
    assert sorted(ids) == sorted(ALLOWED)
    recommended = page.get_by_test_id("model-option").evaluate_all(
        "els => els.map(e => Boolean(e.querySelector('[data-testid=model-badge-recommended]')))"
    )
    assert recommended == sorted(recommended, reverse=True), "recommended first"
    expect(option(page, MINI).get_by_test_id("model-badge-default")).to_have_count(1)
    expect(option(page, MINI)).to_have_attribute("aria-pressed", "true")
    expect(option(page, MINI).get_by_test_id("model-facts")).to_have_text(
        "$0.15 in · $0.60 out per 1M tokens · 128k context"
    )
    expect(option(page, MYTHOMAX).get_by_test_id("model-facts")).to_contain_text("4k context")
    expect(option(page, R1).get_by_test_id("model-badge-reasoning")).to_have_count(1)
    expect(option(page, CLAUDE).get_by_test_id("model-badge-images")).to_have_count(1)
    # Over the budget: shown, disabled, with the reason.
    expect(option(page, CLAUDE)).to_be_disabled()
    expect(option(page, R1)).to_be_disabled()
    expect(option(page, CLAUDE).get_by_test_id("model-unavailable")).to_contain_text(
        "Over your budget"
    )
    expect(option(page, CLAUDE).get_by_test_id("model-unavailable")).to_contain_text(
        "$0.05 left today"
    )
    expect(option(page, MINI)).to_be_enabled()
    both_sizes(page, tmp_path, "picker-open")

    # Searchable: the box filters, and nothing matching says so.
    page.get_by_test_id("model-search").fill("deeps")
    expect(page.get_by_test_id("model-option")).to_have_count(1)
    page.get_by_test_id("model-search").fill("no such model")
    expect(page.get_by_test_id("model-none")).to_have_text("No models match.")
    page.get_by_test_id("model-search").fill("")
    # Escape closes it and gives the focus back to the button.
    page.keyboard.press("Escape")
    expect(picker).to_be_hidden()
    expect(button).to_be_focused()
    expect(button).to_have_attribute("aria-expanded", "false")

    # Pick MythoMax by keyboard (search, Enter picks the first that can be chosen), send.
    page.keyboard.press("Enter")
    expect(picker).to_be_visible()
    page.keyboard.type("mytho")
    page.keyboard.press("Enter")
    expect(picker).to_be_hidden()
    expect(button).to_contain_text("MythoMax 13B")
    send(page, "Which model are you?")
    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(reply.get_by_test_id("message-model")).to_have_text(MYTHOMAX)
    conversation_id = open_conversation_id(page)
    assert conversation(app_url, conversation_id)["model"] == MYTHOMAX
    both_sizes(page, tmp_path, "reply-from-mythomax")

    # Mid-conversation: switch to GPT-4o-mini; the next turn goes there, and it sticks.
    choose(page, MINI)
    send(page, "And now?")
    expect(page.get_by_test_id("message")).to_have_count(4)
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(assistant(page).get_by_test_id("message-model")).to_have_text(MINI)
    expect(assistant(page, 0).get_by_test_id("message-model")).to_have_text(MYTHOMAX)
    page.reload()
    expect(page.get_by_test_id("message")).to_have_count(4)
    expect(button).to_contain_text("GPT-4o-mini")
    send(page, "Still you?")
    expect(page.get_by_test_id("message")).to_have_count(6)
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(assistant(page).get_by_test_id("message-model")).to_have_text(MINI)

    # Regenerate with…: the same models; the new version is from the one chosen.
    last = assistant(page)
    last.get_by_test_id("regenerate-with").click()
    expect(picker).to_be_visible()
    expect(page.get_by_test_id("model-option")).to_have_count(len(ALLOWED))
    expect(option(page, CLAUDE)).to_be_disabled()
    expect(option(page, MINI)).to_have_attribute("aria-pressed", "true")  # this reply's
    # Opened above the last reply's tools, where there is room: whole on screen, not under
    # the composer.
    assert panel_in_view(page)
    accessible(page, "regenerate with, open")
    page.screenshot(path=tmp_path / "regenerate-with-desktop.png")
    option(page, MYTHOMAX).click()
    expect(assistant(page).get_by_test_id("branch-position")).to_have_text("2 / 2")
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(assistant(page).get_by_test_id("message-content")).to_have_text("Again, from MythoMax.")
    expect(assistant(page).get_by_test_id("message-model")).to_have_text(MYTHOMAX)
    both_sizes(page, tmp_path, "regenerated-with-mythomax")

    assert upstream_models(fake) == [MYTHOMAX, MINI, MINI, MYTHOMAX]

    # A new chat starts on the default again, and sends no model.
    page.get_by_test_id("new-chat").click()
    expect(button).to_contain_text("GPT-4o-mini")


def test_the_history_note_and_a_message_too_long_for_the_model(page, app_url, fake, tmp_path):
    long = "word " * 1500  # about 1,500 tokens: two of them do not fit MythoMax's 4k with the reply
    fake.enqueue(
        Behaviour(tokens=["First."]),
        Behaviour(tokens=["Second."]),
        Behaviour(tokens=["Third, on a small model."]),
    )
    page.goto(app_url)
    send(page, long)
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    send(page, long)
    expect(page.get_by_test_id("message")).to_have_count(4)
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)

    choose(page, MYTHOMAX)
    send(page, "Sum it up")
    expect(page.get_by_test_id("message")).to_have_count(6)
    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    note = reply.get_by_test_id("history-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("earlier messages were not sent: they do not fit this model's")
    expect(assistant(page, 0).get_by_test_id("history-note")).to_be_hidden()
    # The note stays with the reply when the conversation is opened again.
    page.reload()
    expect(assistant(page).get_by_test_id("history-note")).to_have_text(note.inner_text())
    both_sizes(page, tmp_path, "history-note")

    # One message alone over the small model's window: refused, readably, nothing written.
    send(page, "word " * 5000)
    error = page.get_by_test_id("app-error")
    expect(error).to_contain_text("too long for gryphe/mythomax-l2-13b")
    expect(error).to_contain_text("4,096 tokens")
    expect(page.get_by_test_id("message")).to_have_count(6)
    assert len(fake.requests) == 3


def embed(page: Page, url: str, model: str) -> None:
    """The coach widget alone on another page of the origin, its script tag naming `model`."""
    tag = f'data-target="#coach" data-model="{model}"'
    html = EMBEDDING_PAGE.replace('data-target="#coach"', tag)
    page.route(url, lambda route: route.fulfill(body=html, content_type="text/html"))
    page.goto(url)


def test_the_coach_widget_sends_its_data_model(page, app_url, fake, tmp_path):
    fake.enqueue(Behaviour(tokens=["Say which Monday."]))
    embed(page, f"{app_url}/embedded", MYTHOMAX)
    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-ask").click()
    expect(panel).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(panel.get_by_test_id("coach-model")).to_have_text(MYTHOMAX)
    assert upstream_models(fake) == [MYTHOMAX]

    # One the coach does not allow: refused, and the widget says so; nothing goes upstream.
    embed(page, f"{app_url}/other", "openai/gpt-4o")
    panel.get_by_test_id("coach-ask").click()
    expect(panel.get_by_test_id("coach-error")).to_contain_text("model_not_allowed")
    assert len(fake.requests) == 1
    page.screenshot(path=tmp_path / "coach-model-not-allowed.png")


def test_a_reply_over_the_providers_count_of_the_context_says_what_to_do(page, app_url, fake):
    # The server fits every request to the window; a provider that counts otherwise answers 400.
    over = "This endpoint's maximum context length is 4096 tokens; you requested 5000 tokens."
    fake.enqueue(Behaviour(status=400, error_body={"error": {"code": 400, "message": over}}))
    page.goto(app_url)
    choose(page, MYTHOMAX)
    send(page, "Hello")
    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "error", timeout=STREAM_TIMEOUT)
    expect(reply.get_by_test_id("message-error")).to_have_text(
        "This conversation is too long for this model's context. Choose a model with a larger"
        " context, or start a new chat."
    )
    page.reload()  # said the same when the conversation is opened again
    expect(assistant(page).get_by_test_id("message-error")).to_have_text(
        "This conversation is too long for this model's context. Choose a model with a larger"
        " context, or start a new chat."
    )
