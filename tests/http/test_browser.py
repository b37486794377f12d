"""The chat page and the coach widget in a real headless Chromium, against a real server.

Each test leaves a screenshot of the state it checked in `test-artifacts/screenshots/`, so a
person can look at what the browser showed. Chromium is Debian's (`/usr/bin/chromium`, installed
by `.ci/run`); Playwright only drives it and never downloads a browser of its own.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from app.dev.simulator import Behaviour
from app.dev.threaded_server import ThreadedServer
from app.http.routes.pages import STATIC_DIR
from tests.http.identity_support import JWT_SETTINGS, SECRET, token
from tests.proxy import CuttingProxy
from tests.support import save_conversations

# The page over the HTTP API: the database behind it is the HTTP tests' to cover on both.
pytestmark = pytest.mark.any_database

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# Long enough for a reply that streams for seconds; conditions are awaited, never slept on.
STREAM_TIMEOUT = 15_000
# The ceiling of every other `expect`, Playwright's 5 s by default. What it waits for is a
# condition, so a slow machine only waits longer; 5 s was too short beside the benchmark smoke
# runs, which the suite starts first: at load 9 here a reloaded page's GET of its conversation
# took longer than that.
expect.set_options(timeout=15_000)
# Keeps every EventSource the page opens, so a test can check none is left to reconnect.
TRACK_EVENT_SOURCES = """
window.__eventSources = [];
window.EventSource = class extends window.EventSource {
  constructor(...args) { super(...args); window.__eventSources.push(this); }
};
"""

if not CHROMIUM.exists() and os.environ.get("CI") != "true":
    pytest.skip(
        f"{CHROMIUM} is missing (apt-get install chromium); in CI this fails instead",
        allow_module_level=True,
    )


def words(count: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i} " for i in range(count)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(TRACK_EVENT_SOURCES)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"the page threw: {errors}"


@pytest.fixture
def app_url(start_server) -> str:
    return start_server().url


def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=full_page)


def send(page: Page, text: str) -> None:
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("composer-input").press("Enter")


def assistant(page: Page, index: int = -1):
    return page.locator('[data-testid="message"][data-role="assistant"]').nth(index)


def conversation(base_url: str, conversation_id: str) -> dict:
    return httpx.get(f"{base_url}/api/conversations/{conversation_id}", timeout=5).json()


def open_event_sources(page: Page) -> int:
    """EventSources not CLOSED: each would keep reconnecting to a finished reply."""
    return page.evaluate("window.__eventSources.filter((s) => s.readyState !== 2).length")


def open_conversation_id(page: Page) -> str:
    match = re.search(r"conversation=([^&]+)", page.url)
    assert match, page.url
    return match.group(1)


def test_a_reply_streams_in_with_its_model_tokens_and_cost(page, app_url, fake):
    tokens = words(30)
    fake.enqueue(
        Behaviour(tokens=tokens, delay=0.05, cost=Decimal("0.000123")),
        Behaviour(tokens=["Second."], cost=Decimal("0.000002")),
    )
    page.goto(app_url)
    send(page, "Tell me something")

    reply = assistant(page)
    content = reply.get_by_test_id("message-content")
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(content).to_contain_text("w3 ")  # tokens arrive while the reply still streams
    expect(page.get_by_test_id("stop")).to_be_visible()
    screenshot(page, "chat-streaming")

    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(content).to_have_text("".join(tokens))
    [generation] = fake.generations.values()
    expect(reply.get_by_test_id("message-model")).to_have_text("openai/gpt-4o")
    expect(reply.get_by_test_id("message-tokens")).to_have_text(
        f"{generation.prompt_tokens} prompt + {len(tokens)} completion tokens"
    )
    expect(reply.get_by_test_id("message-cost")).to_have_text("$0.000123")
    expect(page.get_by_test_id("total-cost")).to_have_text("$0.000123")
    expect(page.get_by_test_id("stop")).to_be_hidden()
    assert open_event_sources(page) == 0
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_count(1)
    expect(items.first.get_by_test_id("conversation-title")).to_have_text("Tell me something")
    screenshot(page, "chat-complete")

    # A second conversation goes to the top of the list, newest first.
    page.get_by_test_id("new-chat").click()
    send(page, "Another topic")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    expect(items.get_by_test_id("conversation-title")).to_have_text(
        ["Another topic", "Tell me something"]
    )
    expect(page.get_by_test_id("total-cost")).to_have_text("$0.000002")


def test_stop_ends_the_reply_with_the_partial_text(page, app_url, fake):
    tokens = words(60)
    fake.enqueue(Behaviour(tokens=tokens, delay=0.1))
    page.goto(app_url)
    send(page, "Write at length")

    reply = assistant(page)
    content = reply.get_by_test_id("message-content")
    expect(content).to_contain_text("w2 ")
    page.get_by_test_id("stop").click()

    expect(reply).to_have_attribute("data-status", "stopped", timeout=STREAM_TIMEOUT)
    expect(reply.get_by_test_id("message-status")).to_have_text("stopped")
    expect(page.get_by_test_id("stop")).to_be_hidden()
    # Rendered as Markdown: a paragraph of the text, its trailing space trimmed.
    shown = content.inner_text()
    assert shown and "".join(tokens).startswith(shown) and shown != "".join(tokens).strip()
    assert open_event_sources(page) == 0

    stored = conversation(app_url, open_conversation_id(page))["messages"][-1]
    assert stored["status"] == "stopped" and stored["finish_reason"] == "stopped"
    assert stored["content"].strip() == shown
    # A stopped reply has no usage chunk: its cost comes from the generation record, later.
    [generation] = fake.generations.values()
    expect(reply.get_by_test_id("message-cost")).to_have_text(f"${float(generation.cost):.6f}")
    expect(reply.get_by_test_id("message-tokens")).to_have_text(
        f"{generation.prompt_tokens} prompt + {generation.completion_tokens} completion tokens"
    )
    screenshot(page, "chat-stopped")


def test_a_reload_mid_reply_continues_it_without_losing_or_repeating_text(page, app_url, fake):
    tokens = words(40)
    # The reply waits after w5 until the reloaded page has shown it live: a reload slower than
    # the rest of the reply (at load 19 here) must not find it over.
    resume = threading.Event()
    fake.enqueue(Behaviour(tokens=tokens, delay=0.06, pause_after=6, resume=resume))
    page.goto(app_url)
    send(page, "A long one please")
    expect(assistant(page).get_by_test_id("message-content")).to_contain_text("w5 ")

    page.reload()

    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(page.get_by_test_id("stop")).to_be_visible()
    screenshot(page, "chat-reloaded-streaming")
    resume.set()
    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(reply.get_by_test_id("message-content")).to_have_text("".join(tokens))
    expect(page.locator('[data-testid="message"]')).to_have_count(2)
    assert open_event_sources(page) == 0
    screenshot(page, "chat-reloaded-complete")


def test_a_dropped_stream_resumes_from_the_last_event_id(page, start_server, fake):
    server = start_server()
    host, port = server.url.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port))
    try:
        tokens = words(40)
        # Held after w3 until the stream is cut: the cut must come mid-reply, however slow.
        resume = threading.Event()
        fake.enqueue(Behaviour(tokens=tokens, delay=0.1, pause_after=4, resume=resume))
        page.goto(proxy.url)
        send(page, "Keep going")
        reply = assistant(page)
        expect(reply.get_by_test_id("message-content")).to_contain_text("w3 ")

        assert proxy.cut_streams() == 1
        expect(reply.get_by_test_id("message-status")).to_have_text("reconnecting…")
        screenshot(page, "chat-reconnecting")
        resume.set()

        expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
        expect(reply.get_by_test_id("message-content")).to_have_text("".join(tokens))
        first, resumed = proxy.stream_requests()
        assert b"last-event-id" not in first.lower()
        last_seen = re.search(rb"(?i)last-event-id: *(\d+)", resumed)
        assert last_seen and int(last_seen.group(1)) > 1, resumed
        assert open_event_sources(page) == 0
        screenshot(page, "chat-resumed")
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("path", "agent"),
    [("/api/chat/stream?message=hi", "chat"), ("/api/coach/stream?question=hi", "coach")],
)
def test_a_plain_eventsource_on_the_one_step_form_makes_one_turn_and_stops(
    page, start_server, fake, database, path, agent
):
    server = start_server()
    host, port = server.url.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port))
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/stream?" in r.url else None)
    fake.enqueue(Behaviour(tokens=words(10), delay=0.02))
    try:
        page.goto(f"{proxy.url}/healthz")
        # Nothing around the EventSource: its events recorded, and no code that closes it.
        page.evaluate(
            """(path) => {
              window.__got = [];
              const source = new EventSource(path);
              for (const name of ['meta', 'delta', 'done']) {
                source.addEventListener(name, (e) => window.__got.push([e.lastEventId, name]));
              }
            }""",
            path,
        )
        # CLOSED: the browser will not reconnect again (it only does so after a 204 here).
        page.wait_for_function(
            "window.__eventSources[0].readyState === EventSource.CLOSED", timeout=STREAM_TIMEOUT
        )
        got = page.evaluate("window.__got")
        message_id = got[0][0].split(":")[0]
        assert got == [
            [f"{message_id}:1", "meta"],
            *[[f"{message_id}:{n}", "delta"] for n in range(2, 12)],
            [f"{message_id}:12", "done"],
        ]
        first, reconnect = proxy.requests_to(path.split("?")[0])
        assert b"last-event-id" not in first.lower()
        assert f"last-event-id: {message_id}:12".encode() in reconnect.lower()
        assert statuses == [200, 204]
        assert len(fake.requests) == 1
        rows = database.query("SELECT agent, role FROM messages ORDER BY seq")
        assert rows == [{"agent": agent, "role": "user"}, {"agent": agent, "role": "assistant"}]
    finally:
        proxy.close()


def test_the_coach_widget_advises_on_the_open_conversation(page, app_url, fake):
    fake.enqueue(
        Behaviour(tokens=["Paris is the capital."]),
        Behaviour(tokens=words(20, "advice"), delay=0.05, cost=Decimal("0.000042")),
    )
    page.goto(app_url)
    send(page, "What is the capital of France?")
    expect(assistant(page)).to_have_attribute("data-status", "complete")

    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-question").fill("Was the answer polite?")
    panel.get_by_test_id("coach-ask").click()
    expect(panel).to_have_attribute("data-status", "streaming")
    expect(panel.get_by_test_id("coach-output")).to_contain_text("advice2 ")
    screenshot(page, "coach-streaming")
    expect(panel).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(panel.get_by_test_id("coach-output")).to_have_text("".join(words(20, "advice")))
    expect(panel.get_by_test_id("coach-cost")).to_have_text("$0.000042")
    screenshot(page, "coach-complete")

    sent = fake.requests[-1]["body"]["messages"][-1]["content"]
    assert "User: What is the capital of France?\nAssistant: Paris is the capital." in sent
    assert "Question:\nWas the answer polite?" in sent
    # The coach's call is its own conversation; the chat list shows chats only.
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)


EMBEDDING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Someone's page</title></head><body>
<article id="draft">Our product ships on Mondays.</article>
<div id="coach"></div>
<script src="/static/coach.js" data-target="#coach" data-context-selector="#draft"></script>
</body></html>"""


def test_the_coach_widget_dropped_into_another_page_sends_its_context(page, app_url, fake):
    fake.enqueue(Behaviour(tokens=["Say which Monday."]))
    # Another page on the same origin, with nothing but the script tag and a target element.
    page.route(
        f"{app_url}/embedded",
        lambda route: route.fulfill(body=EMBEDDING_PAGE, content_type="text/html"),
    )
    page.goto(f"{app_url}/embedded")

    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-question").press("Enter")  # keyboard only, no question
    expect(panel).to_have_attribute("data-status", "complete")
    expect(panel.get_by_test_id("coach-output")).to_have_text("Say which Monday.")
    sent = fake.requests[-1]["body"]["messages"][-1]["content"]
    assert "Context:\nOur product ships on Mondays." in sent
    screenshot(page, "coach-embedded")


def test_the_coach_can_be_stopped_and_keeps_what_it_said(page, app_url, fake):
    advice = words(60, "advice")
    fake.enqueue(Behaviour(tokens=advice, delay=0.1))
    page.goto(app_url)

    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-question").fill("How do I write clearly?")
    panel.get_by_test_id("coach-ask").click()
    expect(panel.get_by_test_id("coach-output")).to_contain_text("advice2 ")
    panel.get_by_test_id("coach-stop").click()

    expect(panel).to_have_attribute("data-status", "stopped", timeout=STREAM_TIMEOUT)
    expect(panel.get_by_test_id("coach-status")).to_have_text("stopped")
    expect(panel.get_by_test_id("coach-tokens")).to_be_hidden()
    # Rendered as Markdown: a paragraph of the text, its trailing space trimmed.
    shown = panel.get_by_test_id("coach-output").inner_text().strip()
    assert shown and "".join(advice).startswith(shown) and shown != "".join(advice).strip()
    assert open_event_sources(page) == 0
    screenshot(page, "coach-stopped")


def test_an_upstream_error_mid_reply_shows_the_error_and_what_was_received(page, app_url, fake):
    fake.enqueue(Behaviour(tokens=words(10), error_after=4))
    page.goto(app_url)
    send(page, "This will fail")

    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "error", timeout=STREAM_TIMEOUT)
    expect(reply.get_by_test_id("message-status")).to_have_text("error")
    expect(reply.get_by_test_id("message-content")).to_have_text("".join(words(4)))
    expect(reply.get_by_test_id("message-error")).to_be_visible()

    # Opened later, the stored reply looks the same.
    page.reload()
    expect(assistant(page)).to_have_attribute("data-status", "error")
    expect(assistant(page).get_by_test_id("message-content")).to_have_text("".join(words(4)))
    expect(assistant(page).get_by_test_id("message-error")).to_be_visible()
    screenshot(page, "chat-error")


def test_model_text_is_shown_as_text_never_as_html(page, app_url, fake):
    fake.enqueue(Behaviour(tokens=["<b>x</b>", ' <img src=x onerror="window.pwned=1">']))
    page.goto(app_url)
    send(page, "<i>hi</i>")

    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete")
    expect(reply.get_by_test_id("message-content")).to_have_text(
        '<b>x</b> <img src=x onerror="window.pwned=1">'
    )
    expect(page.get_by_test_id("message-content").first).to_have_text("<i>hi</i>")
    assert page.locator('[data-testid="message-list"] :is(b, i, img)').count() == 0
    assert page.evaluate("window.pwned") is None
    screenshot(page, "chat-literal-html")


def test_a_phone_screen_has_no_horizontal_scroll(browser, app_url, fake):
    fake.enqueue(
        Behaviour(tokens=["See https://example.com/" + "a" * 200, " for more."]),
        Behaviour(tokens=words(30, "tip")),
    )
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(app_url)
        send(page, "A link please")
        expect(assistant(page)).to_have_attribute("data-status", "complete")
        page.get_by_test_id("coach-ask").click()
        expect(page.get_by_test_id("coach-panel")).to_have_attribute("data-status", "complete")

        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
        for testid in ("composer-input", "send", "coach-ask", "new-chat"):
            box = page.get_by_test_id(testid).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, (testid, box)
        screenshot(page, "phone-360", full_page=True)
    finally:
        context.close()


def embedding_page(app_url: str) -> str:
    """A host page that loads the widget, and sends it, across origins to the app."""
    return EMBEDDING_PAGE.replace(
        '<script src="/static/coach.js"',
        f'<script src="{app_url}/static/coach.js" data-endpoint="{app_url}/api/coach/messages"',
    )


@pytest.fixture
def other_origin() -> Iterator[dict[str, str]]:
    """A second real server (another origin: another port) serving `page["html"]` at `/`."""
    page = {"html": ""}

    async def serve(request):
        return HTMLResponse(page["html"])

    with ThreadedServer(Starlette(routes=[Route("/", serve)]), log_level="critical") as server:
        page["url"] = server.url
        yield page


def test_the_coach_widget_works_from_an_origin_in_cors_origins(
    page, start_server, other_origin, fake
):
    fake.enqueue(Behaviour(tokens=words(10, "advice"), delay=0.02))
    app_url = start_server(cors_origins=other_origin["url"]).url
    other_origin["html"] = embedding_page(app_url)
    page.goto(other_origin["url"])

    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-ask").click()
    expect(panel).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(panel.get_by_test_id("coach-output")).to_have_text("".join(words(10, "advice")))
    assert (
        "Context:\nOur product ships on Mondays."
        in fake.requests[-1]["body"]["messages"][-1]["content"]
    )
    screenshot(page, "coach-cross-origin")


def test_the_coach_widget_says_which_request_failed_and_how(page, start_server, other_origin, fake):
    # An origin the server does not allow: the browser withholds the answer, so the widget
    # can only say where it got none, and what to check.
    app_url = start_server().url
    other_origin["html"] = embedding_page(app_url)
    page.goto(other_origin["url"])
    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-ask").click()
    expect(panel.get_by_test_id("coach-error")).to_contain_text(
        f"No answer from {app_url}/api/coach/messages"
    )
    expect(panel.get_by_test_id("coach-error")).to_contain_text("CORS_ORIGINS")

    # A server that answers with an error: its status and code are shown, then its message.
    app_url = start_server(max_message_chars=10).url
    page.goto(app_url)
    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-question").fill("a question longer than ten characters")
    panel.get_by_test_id("coach-ask").click()
    expect(panel.get_by_test_id("coach-error")).to_have_text(
        "POST /api/coach/messages failed: HTTP 413 question_too_long:"
        " `question` is longer than 10 characters"
    )
    expect(panel).to_have_attribute("data-status", "idle")
    assert fake.requests == []
    screenshot(page, "coach-request-failed")


def test_the_conversation_list_loads_the_next_page_when_scrolled_to_its_end(
    page, app_url, database
):
    save_conversations(database, 65)  # the list asks for 50 at a time
    newest_first = [
        row["id"]
        for row in database.query("SELECT id FROM conversations ORDER BY updated_at DESC, id DESC")
    ]
    items = page.get_by_test_id("conversation-item")

    page.goto(app_url)
    expect(items).to_have_count(50)  # the end of the list is out of view: no second page yet
    items.nth(49).scroll_into_view_if_needed()

    expect(items).to_have_count(65)
    shown = [item.get_attribute("data-conversation-id") for item in items.all()]
    assert shown == newest_first
    expect(page.get_by_test_id("conversation-list-end")).to_have_count(0)  # no page after
    screenshot(page, "conversation-list-second-page")


CITED = {
    "type": "url_citation",
    "url_citation": {
        "url": "https://example.org/tides",
        "title": "Tides and the moon",
        "content": "Tides follow the moon.",
        "start_index": 0,
        "end_index": 5,
    },
}


def test_thinking_shows_live_collapsed_then_the_answer_its_citations_and_its_cut(
    page, app_url, fake
):
    thoughts, answer = words(12, "think"), words(20, "ans")
    fake.enqueue(
        Behaviour(
            reasoning=thoughts,
            tokens=answer,
            delay=0.05,
            annotations=[CITED],
            finish_reason="length",
        )
    )
    page.goto(app_url)
    send(page, "Why are there tides?")

    reply = assistant(page)
    thinking = reply.get_by_test_id("thinking")
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(thinking).to_be_visible()
    expect(reply.get_by_test_id("thinking-label")).to_have_text("Thinking…")
    expect(thinking).not_to_have_attribute("open", "")  # collapsed until the user opens it
    expect(reply.get_by_test_id("thinking-text")).to_have_text("".join(thoughts))
    expect(reply.get_by_test_id("message-content")).to_contain_text("ans2 ")
    screenshot(page, "chat-thinking-collapsed")
    reply.get_by_test_id("thinking-label").click()
    expect(reply.get_by_test_id("thinking-text")).to_be_visible()
    screenshot(page, "chat-thinking-open")

    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(reply.get_by_test_id("message-content")).to_have_text("".join(answer))
    expect(reply.get_by_test_id("thinking-label")).to_have_text("Thought")
    link = reply.get_by_test_id("citation").get_by_role("link")
    expect(link).to_have_text("Tides and the moon")
    expect(link).to_have_attribute("href", "https://example.org/tides")
    expect(reply.get_by_test_id("finish-note")).to_have_text("Cut off at the token limit.")
    screenshot(page, "chat-thinking-answer-citations")

    # Opened again later, from what was saved: the same thinking, citation and note.
    page.reload()
    reply = assistant(page)
    expect(reply.get_by_test_id("thinking")).to_be_visible()
    expect(reply.get_by_test_id("thinking-text")).to_have_text("".join(thoughts))
    expect(reply.get_by_test_id("citation")).to_have_count(1)
    expect(reply.get_by_test_id("finish-note")).to_have_text("Cut off at the token limit.")


def test_a_reply_filtered_by_the_provider_says_so(page, app_url, fake):
    fake.enqueue(Behaviour(tokens=["Part"], finish_reason="content_filter"))
    page.goto(app_url)
    send(page, "Something")
    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete")
    expect(reply.get_by_test_id("finish-note")).to_have_text(
        "Stopped by the provider's content filter."
    )
    expect(reply.get_by_test_id("thinking")).to_be_hidden()  # no thinking, no block


def test_the_coach_shows_its_thinking_then_its_advice(page, app_url, fake):
    fake.enqueue(
        Behaviour(reasoning=["Weigh the tone. ", "Then the length."], tokens=words(10, "tip"))
    )
    page.goto(app_url)
    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-question").fill("Is this polite?")
    panel.get_by_test_id("coach-ask").click()
    expect(panel).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    thinking = panel.get_by_test_id("coach-thinking")
    expect(thinking).to_be_visible()
    expect(thinking).to_contain_text("Thought")
    thinking.locator("summary").click()
    expect(thinking).to_contain_text("Weigh the tone. Then the length.")
    expect(panel.get_by_test_id("coach-output")).to_have_text("".join(words(10, "tip")))
    screenshot(page, "coach-thinking")


# --- Signed in: AUTH_MODE=jwt, the host app's HS256 tokens (JWT_SETTINGS) ------------------------


def host_gives_tokens(page: Page, *tokens: str) -> None:
    """The host app's `getToken()`: hands out `tokens` in turn (the last one from then on)."""
    page.add_init_script(
        f"window.__tokens = {list(tokens)!r}; window.__asked = 0;"
        "window.streamchatGetToken = async () => "
        "window.__tokens[Math.min(window.__asked++, window.__tokens.length - 1)];"
    )


def the_page_with(token_attribute: str) -> str:
    """Our chat page as a host app would serve it, with the user's token on the script tag."""
    html = (STATIC_DIR / "index.html").read_text()
    tag = '<script src="/static/app.js" defer>'
    assert tag in html
    return html.replace(tag, f'<script src="/static/app.js" defer data-token="{token_attribute}">')


def test_a_signed_in_page_streams_and_gets_a_fresh_token_when_its_own_expires(
    page, start_server, fake
):
    fake.enqueue(Behaviour(tokens=words(20), delay=0.02))
    app_url = start_server(**JWT_SETTINGS).url
    expired = token(SECRET, "HS256", sub="ann", exp=1_000_000_000)
    host_gives_tokens(page, expired, token(SECRET, "HS256", sub="ann"))
    page.goto(app_url)
    expect(page.get_by_test_id("conversation-list")).to_contain_text("No conversations yet.")
    # The first token was refused as expired; the page asked the host again and went on.
    assert page.evaluate("window.__asked") == 2
    expect(page.get_by_test_id("app-error")).to_be_hidden()

    send(page, "Signed in")
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(assistant(page).get_by_test_id("message-content")).to_have_text("".join(words(20)))
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)
    [stream_url] = page.evaluate("window.__eventSources.map((s) => s.url)")
    assert "stream_token=" in stream_url and "access_token" not in stream_url
    screenshot(page, "signed-in-complete")


def test_a_signed_in_page_resumes_a_dropped_stream_with_its_stream_token(page, start_server, fake):
    user_token = token(SECRET, "HS256", sub="ann")
    server = start_server(**JWT_SETTINGS)
    host, port = server.url.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port))
    try:
        page.route(
            f"{proxy.url}/host",
            lambda route: route.fulfill(body=the_page_with(user_token), content_type="text/html"),
        )
        tokens = words(40)
        resume = threading.Event()  # held after w3 until the cut, as above
        fake.enqueue(Behaviour(tokens=tokens, delay=0.1, pause_after=4, resume=resume))
        page.goto(f"{proxy.url}/host")
        send(page, "Keep going")
        reply = assistant(page)
        expect(reply.get_by_test_id("message-content")).to_contain_text("w3 ")

        assert proxy.cut_streams() == 1
        resume.set()
        expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
        expect(reply.get_by_test_id("message-content")).to_have_text("".join(tokens))
        first, resumed = proxy.stream_requests()
        assert re.search(rb"(?i)last-event-id: *\d+", resumed), resumed
        for request in (first, resumed):
            request_line = request.split(b"\r\n", 1)[0]
            assert b"stream_token=" in request_line, request_line
            assert user_token.encode() not in request, "the user's JWT never goes in a stream URL"
        assert open_event_sources(page) == 0
        screenshot(page, "signed-in-resumed")
    finally:
        proxy.close()


def test_a_page_without_a_valid_token_says_to_sign_in(page, start_server, fake):
    app_url = start_server(**JWT_SETTINGS).url
    page.goto(app_url)  # no data-token, no getToken
    error = page.get_by_test_id("sign-in-needed")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Sign-in needed: you are not signed in, and this page was given")
    # The composer is off: a message could only fail (test_browser_daily_use.py has the rest).
    expect(page.get_by_test_id("composer-input")).to_be_disabled()
    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-question").fill("Anything?")
    panel.get_by_test_id("coach-ask").click()
    expect(panel.get_by_test_id("coach-error")).to_contain_text("Sign-in needed")
    screenshot(page, "signed-out")

    # A token the server refuses (signed with another secret) reads the same way.
    page.route(
        f"{app_url}/host",
        lambda route: route.fulfill(
            body=the_page_with(token("another-secret-of-32-bytes-or-more!!", "HS256")),
            content_type="text/html",
        ),
    )
    page.goto(f"{app_url}/host")
    expect(page.get_by_test_id("sign-in-needed")).to_contain_text(
        "Sign-in needed: your sign-in was not accepted."
    )
    # A host whose user signed out: its getToken() throws.
    page.add_init_script("window.streamchatGetToken = async () => { throw new Error('out'); };")
    page.goto(app_url)
    expect(page.get_by_test_id("sign-in-needed")).to_contain_text(
        "Sign-in needed: you are not signed in. Sign in again, then reload this page."
    )
    assert fake.requests == []


def test_the_coach_widget_sends_the_token_of_its_script_tag(page, start_server, fake):
    fake.enqueue(Behaviour(tokens=["Say which Monday."]))
    app_url = start_server(**JWT_SETTINGS).url
    user_token = token(SECRET, "HS256", sub="ann")
    html = EMBEDDING_PAGE.replace(
        'data-target="#coach"', f'data-target="#coach" data-token="{user_token}"'
    )
    page.route(
        f"{app_url}/embedded", lambda route: route.fulfill(body=html, content_type="text/html")
    )
    page.goto(f"{app_url}/embedded")
    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-ask").click()
    expect(panel).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(panel.get_by_test_id("coach-output")).to_have_text("Say which Monday.")
    listed = httpx.get(
        f"{app_url}/api/conversations",
        headers={"Authorization": f"Bearer {user_token}"},
        timeout=5,
    ).json()["conversations"]
    assert [c["agent"] for c in listed] == ["coach"], "saved as the token's user"


def test_the_page_shows_the_days_spend_and_says_when_a_budget_refused(page, start_server, fake):
    # A turn reserves about $0.011 at worst (gpt-4o, 1024 tokens): the first fits $0.02, the
    # second not once the first has cost $0.0123.
    url = start_server(budget_user_daily_usd=Decimal("0.02")).url
    fake.enqueue(Behaviour(tokens=["Hello."], cost=Decimal("0.0123")))
    page.goto(url)
    expect(page.get_by_test_id("usage")).to_have_text("$0.00 of $0.02 spent today")
    send(page, "First")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    expect(page.get_by_test_id("usage")).to_have_text("$0.0123 of $0.02 spent today")

    send(page, "Second")
    expect(page.get_by_test_id("app-error")).to_contain_text(
        "Not sent: this message could cost more than what is left of your daily budget"
    )
    expect(page.get_by_test_id("composer-input")).to_have_value("Second")
    screenshot(page, "chat-budget-refused")


# -- regenerate, edit, the branch switcher, titles and timestamps (issue 22) --

PHONE = {"width": 390, "height": 844}


def user_message(page: Page, index: int = 0):
    return page.locator('[data-testid="message"][data-role="user"]').nth(index)


def answered(page: Page, text: str) -> None:
    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(reply.get_by_test_id("message-content")).to_have_text(text)


def on_a_phone(page: Page, name: str) -> None:
    """The same state on a 390 px screen: nothing wider than it, and its screenshot."""
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, f"{name}-phone-390", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})


def test_regenerate_shows_2_of_2_and_switching_back_shows_the_first_answer(page, app_url, fake):
    fake.enqueue(Behaviour(tokens=["First answer."]), Behaviour(tokens=["Second answer."]))
    page.goto(app_url)
    send(page, "Tell me something")
    answered(page, "First answer.")
    expect(page.get_by_test_id("message-time")).to_have_count(2)

    assistant(page).get_by_test_id("regenerate").click()
    answered(page, "Second answer.")
    expect(page.get_by_test_id("message")).to_have_count(2)
    expect(assistant(page).get_by_test_id("branch-position")).to_have_text("2 / 2")
    expect(assistant(page).get_by_test_id("branch-next")).to_be_disabled()
    screenshot(page, "chat-regenerated")
    on_a_phone(page, "chat-regenerated")

    assistant(page).get_by_test_id("branch-prev").click()
    answered(page, "First answer.")
    expect(assistant(page).get_by_test_id("branch-position")).to_have_text("1 / 2")
    screenshot(page, "chat-first-answer-again")


def test_edit_makes_a_branch_and_the_old_one_stays(page, app_url, fake):
    fake.enqueue(
        Behaviour(tokens=["A1"]), Behaviour(tokens=["A2"]), Behaviour(tokens=["A1 edited"])
    )
    page.goto(app_url)
    send(page, "Q1")
    answered(page, "A1")
    send(page, "Q2")
    answered(page, "A2")

    user_message(page, 0).get_by_test_id("edit").click()
    page.get_by_test_id("edit-input").fill("Q1 edited")
    screenshot(page, "chat-editing")
    page.get_by_test_id("edit-save").click()
    answered(page, "A1 edited")
    expect(page.get_by_test_id("message")).to_have_count(2)
    first = user_message(page, 0)
    expect(first.get_by_test_id("message-content")).to_have_text("Q1 edited")
    expect(first.get_by_test_id("branch-position")).to_have_text("2 / 2")
    screenshot(page, "chat-edited")
    on_a_phone(page, "chat-edited")

    user_message(page, 0).get_by_test_id("branch-prev").click()
    expect(page.get_by_test_id("message")).to_have_count(4)
    expect(user_message(page, 1).get_by_test_id("message-content")).to_have_text("Q2")
    answered(page, "A2")


def test_the_titlers_title_appears_in_the_header_and_the_list(page, start_server, fake):
    server = start_server(auto_titles=True)
    fake.enqueue(
        Behaviour(tokens=["Bring a light jacket."]), Behaviour(tokens=["Packing for Lisbon"])
    )
    page.goto(server.url)
    send(page, "what should I pack for a week in Lisbon in May")
    answered(page, "Bring a light jacket.")

    expect(page.get_by_test_id("chat-title")).to_have_text(
        "Packing for Lisbon", timeout=STREAM_TIMEOUT
    )
    expect(page.get_by_test_id("conversation-title")).to_have_text(["Packing for Lisbon"])
    screenshot(page, "chat-titled")
    on_a_phone(page, "chat-titled")
