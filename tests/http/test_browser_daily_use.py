"""The page as people use it every day (issue 31), in a real headless Chromium against a real
server: following the reply on a phone and a desktop, titles, rename, delete and undo, the
spend line, the coach's reset, editing, copying, the sign-in message, images that are never
fetched; and axe-core on each state (no violation of the serious or critical kinds).

Each test saves screenshots of the states it checked, at desktop size and on a 390 px phone,
in its own tmp dir.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from app.dev.simulator import Behaviour
from app.dev.threaded_server import ThreadedServer
from tests.http import test_browser
from tests.http.identity_support import SECRET, token
from tests.http.test_browser import (
    JWT_SETTINGS,
    STREAM_TIMEOUT,
    assistant,
    open_conversation_id,
    send,
    user_message,
    words,
)

# The page over the HTTP API: the database behind it is the HTTP tests' to cover on both.
pytestmark = pytest.mark.any_database

# The browser, its page and the app's server: the fixtures of `test_browser.py`, by name.
browser, page, app_url = test_browser.browser, test_browser.page, test_browser.app_url
AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ADMIN_TOKEN = "admin-token-for-the-daily-use-tests-0123456789"


def accessible(page: Page, state: str) -> None:
    """axe-core on the page as it is: no violation of the serious or critical kinds."""
    if not page.evaluate("Boolean(window.axe)"):
        page.evaluate(AXE)
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".filter((v) => ['serious', 'critical'].includes(v.impact))"
        ".map((v) => ({id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target)}))"
    )
    assert found == [], f"{state}: {json.dumps(found, indent=1)}"


def both_sizes(page: Page, tmp_path: Path, name: str) -> None:
    """Screenshots of this state at desktop size and on a 390 px phone (nothing wider than
    it), each checked with axe-core; the viewport is left as it was."""
    before = page.viewport_size
    for size, label in ((DESKTOP, "desktop"), (PHONE, "phone-390")):
        page.set_viewport_size(size)
        if size is PHONE:
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=tmp_path / f"{name}-{label}.png", full_page=size is PHONE)
        accessible(page, f"{name} ({label})")
    page.set_viewport_size(before)


def end_in_view(page: Page) -> bool:
    """The newest message's end is on screen, above the composer."""
    return page.evaluate(
        """() => {
          const last = [...document.querySelectorAll('[data-testid="message"]')].pop();
          const composer = document.querySelector('[data-testid="composer"]');
          const list = document.querySelector('[data-testid="message-list"]')
            .getBoundingClientRect();
          const end = last.getBoundingClientRect().bottom;
          const ok = end <= composer.getBoundingClientRect().top + 2 && end >= list.top
            && end <= window.innerHeight;
          return ok;
        }"""
    )


def long_reply(count: int) -> list[str]:
    return [f"Line {i} of a long answer.\n\n" for i in range(count)]


# -- 1. following the reply -----------------------------------------------------------------


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_the_page_follows_the_reply_until_the_reader_scrolls_up(
    page, app_url, fake, tmp_path, size
):
    page.set_viewport_size(size)
    fake.enqueue(
        Behaviour(tokens=long_reply(30)),
        Behaviour(tokens=long_reply(80), delay=0.06),
    )
    page.goto(app_url)
    send(page, "A first long one")
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    send(page, "And another")
    expect(page.get_by_test_id("message")).to_have_count(4)
    reply = assistant(page)
    expect(reply.get_by_test_id("message-content")).to_contain_text("Line 20 ")
    # While the reader stays at the end, the end stays in view as the reply grows.
    assert end_in_view(page), "the streaming reply is out of view"
    expect(reply.get_by_test_id("message-content")).to_contain_text("Line 30 ")
    assert end_in_view(page)
    page.screenshot(path=tmp_path / "following.png")

    # They scroll up: the reply no longer pulls them down, and "Jump to latest" appears.
    page.evaluate(
        "window.scrollTo(0, 0);"
        " document.querySelector('[data-testid=\"message-list\"]').scrollTop = 0"
    )
    jump = page.get_by_test_id("jump-latest")
    expect(jump).to_be_visible()
    expect(reply.get_by_test_id("message-content")).to_contain_text("Line 45 ")
    assert not end_in_view(page)
    assert (
        page.evaluate(
            "window.scrollY + document.querySelector('[data-testid=\"message-list\"]').scrollTop"
        )
        < 50
    )
    page.screenshot(path=tmp_path / "scrolled-up.png")
    accessible(page, "scrolled up while streaming")

    jump.click()
    expect(jump).to_be_hidden()
    assert end_in_view(page)
    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    assert end_in_view(page), "followed to the end once more"

    # Opening the conversation (a reload) shows its latest message, not its top.
    page.reload()
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    expect(page.get_by_test_id("message")).to_have_count(4)
    page.wait_for_function("() => document.readyState === 'complete'")
    assert end_in_view(page), "a conversation opens at its latest message"
    page.screenshot(path=tmp_path / "opened-at-latest.png", full_page=False)
    accessible(page, "opened at its latest message")


# -- 2. title after a stopped first reply ------------------------------------------------------


def test_a_chat_whose_first_reply_was_stopped_is_titled_after_its_first_complete_one(
    page, start_server, fake, tmp_path
):
    server = start_server(auto_titles=True)
    fake.enqueue(
        Behaviour(tokens=words(80), delay=0.1),
        Behaviour(tokens=["One, two, three."]),
        Behaviour(tokens=["Counting to three"]),
    )
    page.goto(server.url)
    send(page, "Please count for me")
    expect(assistant(page).get_by_test_id("message-content")).to_contain_text("w2 ")
    page.get_by_test_id("stop").click()
    expect(assistant(page)).to_have_attribute("data-status", "stopped", timeout=STREAM_TIMEOUT)
    assert len(fake.requests) == 1, "no title for a stopped reply"
    expect(page.get_by_test_id("chat-title")).to_have_text("Please count for me")

    send(page, "Count to three then")
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(page.get_by_test_id("chat-title")).to_have_text(
        "Counting to three", timeout=STREAM_TIMEOUT
    )
    expect(page.get_by_test_id("conversation-title")).to_have_text(["Counting to three"])
    both_sizes(page, tmp_path, "titled-after-stop")


# -- 3. rename ---------------------------------------------------------------------------------


def test_rename_from_the_header_and_from_the_list(page, app_url, fake, tmp_path):
    fake.enqueue(Behaviour(tokens=["Hi."]))
    page.goto(app_url)
    send(page, "Hello there")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    conversation_id = open_conversation_id(page)

    page.get_by_test_id("rename").click()
    box = page.get_by_test_id("title-input")
    expect(box).to_be_focused()
    expect(box).to_have_value("Hello there")
    box.fill("Greetings, planned")
    both_sizes(page, tmp_path, "renaming-in-the-header")
    box.press("Enter")
    expect(page.get_by_test_id("chat-title")).to_have_text("Greetings, planned")
    expect(page.get_by_test_id("conversation-title")).to_have_text(["Greetings, planned"])

    # Escape keeps the old title.
    page.get_by_test_id("rename").click()
    page.get_by_test_id("title-input").fill("Not this")
    page.get_by_test_id("title-input").press("Escape")
    expect(page.get_by_test_id("chat-title")).to_have_text("Greetings, planned")

    page.get_by_test_id("rename-conversation").click()
    page.get_by_test_id("title-input").fill("From the list")
    page.get_by_test_id("title-input").press("Enter")
    expect(page.get_by_test_id("conversation-title")).to_have_text(["From the list"])
    expect(page.get_by_test_id("chat-title")).to_have_text("From the list")
    stored = httpx.get(f"{app_url}/api/conversations/{conversation_id}", timeout=5).json()
    assert (stored["title"], stored["titled"]) == ("From the list", True)
    both_sizes(page, tmp_path, "renamed")


# -- 4. delete, with undo ----------------------------------------------------------------------


def test_delete_can_be_undone_for_a_few_seconds_then_happens(page, app_url, fake, tmp_path):
    fake.enqueue(Behaviour(tokens=["A."]), Behaviour(tokens=["B."]))
    page.goto(app_url)
    send(page, "Keep me")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    page.get_by_test_id("new-chat").click()
    send(page, "Delete me")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_count(2)

    items.first.get_by_test_id("delete-conversation").click()
    expect(items).to_have_count(1)
    expect(page.get_by_test_id("undo-bar")).to_contain_text("Deleted “Delete me”.")
    expect(page.get_by_test_id("chat-title")).to_have_text("New conversation")
    both_sizes(page, tmp_path, "deleted-with-undo")
    listed = httpx.get(f"{app_url}/api/conversations", timeout=5).json()["conversations"]
    assert len(listed) == 2, "nothing deleted while it can be undone"

    page.get_by_test_id("undo-delete").click()
    expect(items).to_have_count(2)
    expect(page.get_by_test_id("undo-bar")).to_be_hidden()
    expect(page.get_by_test_id("chat-title")).to_have_text("Delete me")

    items.first.get_by_test_id("delete-conversation").click()
    expect(page.get_by_test_id("undo-bar")).to_be_hidden(timeout=STREAM_TIMEOUT)
    listed = httpx.get(f"{app_url}/api/conversations", timeout=5).json()["conversations"]
    assert [c["title"] for c in listed] == ["Keep me"]
    expect(items.get_by_test_id("conversation-title")).to_have_text(["Keep me"])


# -- 6. the spend line and refusals --------------------------------------------------------------


def test_the_spend_line_shows_what_was_spent_and_refusals_read_as_sentences(
    page, start_server, fake, tmp_path
):
    # A turn reserves about $0.011 at worst (gpt-4o, 1024 tokens): the first fits $0.02, the
    # third not once two have cost $0.0123 together.
    server = start_server(budget_user_daily_usd=Decimal("0.02"), admin_token=ADMIN_TOKEN)
    fake.enqueue(
        Behaviour(tokens=["Hello."], cost=Decimal("0.000049")),
        Behaviour(tokens=["Again."], cost=Decimal("0.012251")),
    )
    page.goto(server.url)
    usage = page.get_by_test_id("usage")
    expect(usage).to_have_text("$0.00 of $0.02 spent today")
    send(page, "First")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    expect(usage).to_have_text("$0.000049 of $0.02 spent today")
    expect(assistant(page).get_by_test_id("message-cost")).to_have_text("$0.000049")
    send(page, "Second")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    expect(usage).to_have_text("$0.0123 of $0.02 spent today")

    send(page, "Third")
    error = page.get_by_test_id("app-error")
    expect(error).to_contain_text(
        "Not sent: this message could cost more than what is left of your daily budget"
        " ($0.0123 spent of $0.02)."
    )
    both_sizes(page, tmp_path, "budget-refused")

    # An unpriced model under a budget (409 price_unknown) says which and what to do.
    unpriced = "cognitivecomputations/dolphin-mixtral-8x22b"
    httpx.put(
        f"{server.url}/api/catalog/agents/chat",
        json={"model": unpriced},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=5,
    ).raise_for_status()
    send(page, "Fourth")
    expect(error).to_have_text(
        f"Not sent: the price of {unpriced} is not known, and your spending has a limit, so "
        "this message cannot be priced in advance. Try again later, or ask the operator to "
        "choose another model."
    )
    both_sizes(page, tmp_path, "price-unknown")


def test_a_rate_limit_reads_as_when_to_try_again(page, start_server, fake, tmp_path):
    server = start_server(limit_user_rpm=1)
    fake.enqueue(Behaviour(tokens=["Hi."]))
    page.goto(server.url)
    send(page, "One")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    send(page, "Two")
    expect(page.get_by_test_id("app-error")).to_have_text(
        re.compile(r"^Not sent: too many messages in a minute\. Try again in \d+ seconds\.$")
    )
    expect(page.get_by_test_id("composer-input")).to_have_value("Two")
    both_sizes(page, tmp_path, "rate-limited")


# -- 7. the coach panel ----------------------------------------------------------------------


def test_the_coach_renders_markdown_and_new_chat_resets_it(page, app_url, fake, tmp_path):
    fake.enqueue(
        Behaviour(tokens=["Hi."]),
        Behaviour(tokens=["**Be specific.**\n\n", "- say when\n", "- say where\n"]),
    )
    page.goto(app_url)
    send(page, "Meet me soon")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    panel = page.get_by_test_id("coach-panel")
    panel.get_by_test_id("coach-ask").click()
    expect(panel).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    output = panel.get_by_test_id("coach-output")
    expect(output.locator("strong")).to_have_text("Be specific.")
    expect(output.locator("li")).to_have_text(["say when", "say where"])
    assert "**" not in output.inner_text()
    both_sizes(page, tmp_path, "coach-markdown")

    page.get_by_test_id("new-chat").click()
    expect(output).to_be_empty()
    expect(panel.get_by_test_id("coach-meta")).to_be_hidden()
    expect(panel).to_have_attribute("data-status", "idle")
    both_sizes(page, tmp_path, "coach-reset")


# -- 8. editing at the composer's width ----------------------------------------------------------


def test_a_question_is_edited_at_the_composers_width(page, app_url, fake, tmp_path):
    fake.enqueue(Behaviour(tokens=["A1"]), Behaviour(tokens=["A1 again"]))
    page.goto(app_url)
    send(page, "Q1")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    question = user_message(page, 0)
    question.get_by_test_id("edit").click()
    editor = page.get_by_test_id("edit-input")
    expect(editor).to_be_focused()
    expect(question.get_by_test_id("edit")).to_be_hidden()
    composer = page.get_by_test_id("composer-input").bounding_box()
    box = editor.bounding_box()
    assert box["width"] >= 0.75 * composer["width"], (box, composer)
    assert box["height"] >= 80
    both_sizes(page, tmp_path, "editing")
    editor.fill("Q1, said better")
    page.get_by_test_id("edit-save").click()
    expect(assistant(page).get_by_test_id("message-content")).to_have_text("A1 again")
    expect(user_message(page, 0).get_by_test_id("edit")).to_be_visible()


# -- 9. copy -----------------------------------------------------------------------------------


def test_a_whole_reply_can_be_copied_and_the_code_copy_covers_no_line(
    page, app_url, fake, tmp_path
):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    long_line = "x = " + " + ".join(f"value_{i}" for i in range(40))
    reply_text = f"Here:\n\n```python\n{long_line}\n```\n\nDone."
    fake.enqueue(Behaviour(tokens=[reply_text]))
    page.goto(app_url)
    send(page, "Code please")
    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete")

    reply.get_by_test_id("copy-reply").click()
    expect(reply.get_by_test_id("copy-reply")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == reply_text

    button = reply.get_by_test_id("copy-code").bounding_box()
    code = reply.locator("pre").bounding_box()
    assert button["y"] + button["height"] <= code["y"], "the Copy button sits above the code"
    both_sizes(page, tmp_path, "copy")


# -- 10. a production page without a token ------------------------------------------------------


def test_a_page_given_no_token_says_what_is_missing_and_turns_the_composer_off(
    page, start_server, fake, tmp_path
):
    server = start_server(**JWT_SETTINGS)
    page.goto(server.url)  # no data-token, no getToken
    notice = page.get_by_test_id("sign-in-needed")
    expect(notice).to_contain_text("this page was given no sign-in token")
    expect(notice).to_contain_text("Signing in")
    expect(page.get_by_test_id("composer-input")).to_be_disabled()
    expect(page.get_by_test_id("send")).to_be_disabled()
    expect(page.get_by_test_id("app-error")).to_be_hidden()
    both_sizes(page, tmp_path, "no-token")
    assert fake.requests == []

    # A host that hands a token its server refuses: the user is told to sign in again.
    page.add_init_script(
        "window.streamchatGetToken = async () => "
        f"{json.dumps(token('another-secret-of-32-bytes-or-more!!', 'HS256'))};"
    )
    page.goto(server.url)
    expect(notice).to_contain_text("Sign-in needed: your sign-in was not accepted.")
    expect(page.get_by_test_id("composer-input")).to_be_disabled()


# -- issue 30, item 1: an image in a reply is never fetched --------------------------------------


@pytest.fixture
def image_host() -> Iterator[dict]:
    """Another origin (another port) that counts what is asked of it."""
    seen: dict = {"paths": []}

    async def anything(request):
        seen["paths"].append(request.url.path + "?" + request.url.query)
        return Response(b"GIF89a", media_type="image/gif")

    app = Starlette(routes=[Route("/{path:path}", anything)])
    with ThreadedServer(app, log_level="critical") as server:
        seen["url"] = server.url
        yield seen


def test_an_image_in_a_reply_becomes_a_link_and_is_never_fetched(
    page, app_url, fake, image_host, tmp_path
):
    image = f"{image_host['url']}/p.gif?d=secret"
    fake.enqueue(Behaviour(tokens=[f"Look: ![x]({image}) and ", f"![y]({image}&again)"]))
    leaving: list[str] = []
    page.on(
        "request",
        lambda r: leaving.append(r.url) if r.url.startswith(image_host["url"]) else None,
    )
    page.goto(app_url)
    send(page, "Show me")
    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete")
    links = reply.locator("[data-testid=message-content] a")
    expect(links).to_have_count(2)
    expect(links.first).to_have_text("Image: x")
    assert links.first.get_attribute("href") == image
    assert links.first.get_attribute("rel") == "noopener noreferrer"
    assert reply.locator("img").count() == 0
    both_sizes(page, tmp_path, "image-as-link")
    # An image slipped into the page anyway is refused by its CSP.
    page.evaluate(
        f"() => {{ const i = new Image(); i.src = {json.dumps(image + '&csp')};"
        " document.body.append(i); }"
    )
    page.reload()
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    assert leaving == [] or all("&csp" in url for url in leaving)
    assert image_host["paths"] == [], "no request left for the foreign image"


# -- feedback on replies ---------------------------------------------------------------------


def test_a_reply_is_rated_with_a_comment_kept_after_a_reload_and_taken_back(
    page, app_url, fake, database, tmp_path
):
    fake.enqueue(Behaviour(tokens=["Take the 8:15 train."]))
    page.goto(app_url)
    send(page, "How do I get there?")
    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete")

    reply.get_by_test_id("rate-up").click()
    expect(reply.get_by_test_id("rate-up")).to_have_attribute("aria-pressed", "true")
    comment = reply.get_by_test_id("feedback-comment-input")
    expect(comment).to_be_focused()
    comment.fill("Exactly what I needed")
    both_sizes(page, tmp_path, "rating-with-comment")
    reply.get_by_test_id("feedback-save").click()
    expect(reply.get_by_test_id("feedback-comment")).to_be_hidden()
    expect(reply.get_by_test_id("feedback-note")).to_have_text("Thanks for the feedback.")
    assert database.query("SELECT rating, comment FROM feedback") == [
        {"rating": 1, "comment": "Exactly what I needed"}
    ]

    page.reload()
    reply = assistant(page)
    expect(reply.get_by_test_id("rate-up")).to_have_attribute("aria-pressed", "true")
    expect(reply.get_by_test_id("rate-down")).to_have_attribute("aria-pressed", "false")
    both_sizes(page, tmp_path, "rated")

    reply.get_by_test_id("rate-down").click()
    expect(reply.get_by_test_id("rate-down")).to_have_attribute("aria-pressed", "true")
    reply.get_by_test_id("rate-down").click()
    expect(reply.get_by_test_id("rate-down")).to_have_attribute("aria-pressed", "false")
    expect(reply.get_by_test_id("feedback-note")).to_have_text("Rating removed.")
    assert database.query("SELECT rating FROM feedback") == []


# -- a shared conversation -------------------------------------------------------------------


def test_a_shared_link_shows_the_conversation_read_only_and_sends_no_token(
    browser, page, start_server, fake, tmp_path
):
    server = start_server(**JWT_SETTINGS)
    user_token = token(SECRET, "HS256", sub="ann")
    page.add_init_script(f"window.streamchatGetToken = async () => {json.dumps(user_token)};")
    fake.enqueue(Behaviour(tokens=["Take **the 8:15** train."]))
    page.goto(server.url)
    send(page, "How do I get there?")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    page.get_by_test_id("share").click()
    link = page.get_by_test_id("share-url")
    expect(link).to_have_value(re.compile(rf"^{re.escape(server.url)}/shared/[\w-]{{43}}$"))
    both_sizes(page, tmp_path, "sharing")
    url = link.input_value()

    # Anyone with the link: a browser of its own, signed in nowhere.
    other = browser.new_context(viewport=DESKTOP)
    try:
        reader = other.new_page()
        sent: list[tuple[str, str | None]] = []
        reader.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        reader.goto(url)
        expect(reader.get_by_test_id("chat-title")).to_have_text("How do I get there?")
        messages = reader.get_by_test_id("message-content")
        expect(messages).to_have_text(["How do I get there?", "Take the 8:15 train."])
        expect(messages.nth(1).locator("strong")).to_have_text("the 8:15")
        assert (
            reader.locator("[data-testid=composer], textarea, [data-testid=message-cost]").count()
            == 0
        )
        both_sizes(reader, tmp_path, "shared-page")
        assert all(u.startswith(server.url) for u, _ in sent), sent
        assert all(auth is None for _, auth in sent), "a shared page sends no token"
    finally:
        other.close()

    page.get_by_test_id("share-revoke").click()
    expect(page.get_by_test_id("share-box")).to_be_hidden()
    again = browser.new_context(viewport=DESKTOP)
    try:
        reader = again.new_page()
        reader.goto(url)
        expect(reader.get_by_test_id("app-error")).to_contain_text("its owner took it back")
    finally:
        again.close()


# -- keyboard and screen readers --------------------------------------------------------------


def test_a_streaming_reply_is_announced_politely_and_esc_stops_it(page, app_url, fake, tmp_path):
    fake.enqueue(Behaviour(tokens=words(80), delay=0.1))
    page.goto(app_url)
    accessible(page, "an empty page")
    send(page, "Write at length")
    reply = assistant(page)
    content = reply.get_by_test_id("message-content")
    expect(content).to_contain_text("w2 ")
    expect(content).to_have_attribute("aria-live", "polite")
    expect(content).to_have_attribute("aria-busy", "true")
    both_sizes(page, tmp_path, "streaming")

    page.keyboard.press("Escape")
    expect(reply).to_have_attribute("data-status", "stopped", timeout=STREAM_TIMEOUT)
    expect(content).to_have_attribute("aria-busy", "false")
    # Focus comes back to the message box, visibly.
    expect(page.get_by_test_id("composer-input")).to_be_focused()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    both_sizes(page, tmp_path, "stopped-by-esc")
