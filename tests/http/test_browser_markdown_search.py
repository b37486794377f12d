"""The chat page's Markdown replies, search box, timestamps and export links in a real headless
Chromium against a real server (the fixtures and helpers of `test_browser.py`). Each state is
saved as a screenshot at desktop size and on a 390 px phone."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.dev.simulator import Behaviour
from tests.http import test_browser
from tests.http.test_browser import (
    STREAM_TIMEOUT,
    assistant,
    conversation,
    open_conversation_id,
    screenshot,
    send,
)
from tests.support import local_client

# As test_browser.py: the page, not the database behind it.
pytestmark = pytest.mark.any_database

# The browser, its page and the app's server: the fixtures of `test_browser.py`, by name.
browser, page, app_url = test_browser.browser, test_browser.page, test_browser.app_url

PHONE = {"width": 390, "height": 844}

# Counts renders of a reply (DOMPurify.sanitize calls) and the animation frame each ran in:
# rAF callbacks of one frame share its timestamp, recorded while they run.
COUNT_RENDERS = """
window.__renders = [];
let frame = null;
const requestFrame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => requestFrame((time) => {
  frame = time;
  try { callback(time); } finally { frame = null; }
});
let purify;
Object.defineProperty(window, 'DOMPurify', {
  configurable: true,
  get: () => purify,
  set: (value) => {
    const sanitize = value.sanitize.bind(value);
    value.sanitize = (...args) => { window.__renders.push(frame); return sanitize(...args); };
    purify = value;
  },
});
"""

CODE = 'def tide(moon):\n    return "<high>" if moon else "low"\n'
ANSWER = (
    "# Tides\n\nThe **moon** pulls the sea. See [the docs](https://example.org/docs).\n\n"
    "| hour | height |\n|---|---|\n| 06:00 | 1.2 m |\n| 12:00 | 0.4 m |\n\n"
    f"```python\n{CODE}```\n\n- one\n- two\n"
)


def both_screens(page: Page, name: str) -> None:
    """The state as it is, at desktop size and on a phone (the whole page, as it scrolls)."""
    screenshot(page, name)
    desktop = page.viewport_size
    page.set_viewport_size(PHONE)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], (name, width)  # nothing wider than the phone
    screenshot(page, f"{name}-phone-390", full_page=True)
    page.set_viewport_size(desktop)


def chunks(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_a_reply_renders_as_markdown_once_per_frame_with_code_to_copy(page, app_url, fake):
    page.add_init_script(COUNT_RENDERS)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_url)
    tokens = chunks(ANSWER)
    fake.enqueue(Behaviour(tokens=tokens, delay=0.002))
    page.goto(app_url)
    send(page, "How do tides work?")

    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    content = reply.get_by_test_id("message-content")
    expect(content.locator("h1")).to_have_text("Tides")
    expect(content.locator("strong")).to_have_text("moon")
    link = content.get_by_role("link", name="the docs")
    expect(link).to_have_attribute("href", "https://example.org/docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(content.locator("table tr")).to_have_count(3)
    expect(content.locator("td").nth(2)).to_have_text("12:00")
    expect(content.locator("li")).to_have_text(["one", "two"])
    expect(content.locator("pre code")).to_have_text(CODE)
    # The user's own message stays the text they typed.
    expect(page.get_by_test_id("message-content").first).to_have_text("How do tides work?")

    # Rendered while streaming at most once per animation frame, and far fewer times than
    # deltas arrived; outside frames only when the view was made and when the reply ended.
    renders = page.evaluate("window.__renders")
    in_frames = [time for time in renders if time is not None]
    assert len(in_frames) == len(set(in_frames)), renders
    assert len(renders) - len(in_frames) == 2, renders
    assert len(renders) < len(tokens), (len(renders), len(tokens))

    reply.get_by_test_id("copy-code").click()
    expect(reply.get_by_test_id("copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    both_screens(page, "markdown-reply")

    # Opened again from what was saved: the same Markdown, and each message's time.
    page.reload()
    reply = assistant(page)
    expect(reply.get_by_test_id("message-content").locator("table")).to_be_visible()
    saved = conversation(app_url, open_conversation_id(page))["messages"]
    times = page.get_by_test_id("message-time")
    expect(times).to_have_count(2)
    assert [t.get_attribute("datetime") for t in times.all()] == [m["created_at"] for m in saved]
    assert all(t.inner_text().strip() for t in times.all())


HOSTILE = [
    "<script>window.pwned = 1</script>\n\n",
    '<img src=x onerror="window.pwned = 2">\n\n',
    "[click me](javascript:window.pwned=3) and ",
    '<a href="javascript:window.pwned=4">link</a>\n\n',
    "![pic](javascript:window.pwned=5) <iframe src=javascript:alert(1)></iframe>\n\n",
    "<svg onload=alert(1)>",
]


def test_markup_in_model_text_is_shown_escaped_and_never_runs(page, app_url, fake):
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    fake.enqueue(Behaviour(tokens=HOSTILE, delay=0.01))
    page.goto(app_url)
    send(page, "Say something dangerous")

    reply = assistant(page)
    expect(reply).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    content = reply.get_by_test_id("message-content")
    for text in (
        "<script>window.pwned = 1</script>",
        '<img src=x onerror="window.pwned = 2">',
        "[click me](javascript:window.pwned=3)",
        '<a href="javascript:window.pwned=4">link</a>',
        "<svg onload=alert(1)>",
    ):
        expect(content).to_contain_text(text)
    injected = '[data-testid="message-list"] :is(script, img, iframe, svg, object, embed)'
    assert page.locator(injected).count() == 0
    assert page.locator('[data-testid="message-list"] a[href^="javascript:" i]').count() == 0
    assert page.evaluate("window.pwned") is None
    assert dialogs == []
    both_screens(page, "markdown-xss-inert")


def test_search_lists_snippets_with_marks_and_opens_the_conversation(page, app_url, fake):
    fake.enqueue(
        Behaviour(tokens=["Walruses sleep on ice."]),
        Behaviour(tokens=["A <b>walrus</b> is big; the walrus naps."]),
        Behaviour(tokens=["Nothing here."]),
    )
    with local_client(app_url) as client:
        for message in ("About seals", "Tell me of the walrus", "Unrelated"):
            response = client.post("/api/chat", json={"message": message, "stream": False})
            assert response.status_code == 200, response.text
    page.goto(app_url)
    expect(page.get_by_test_id("conversation-item")).to_have_count(3)

    page.get_by_test_id("search-input").fill("walrus")
    results = page.get_by_test_id("search-result")
    expect(results).to_have_count(1)
    expect(page.get_by_test_id("conversation-list")).to_be_hidden()
    expect(results.get_by_test_id("search-result-title")).to_have_text("Tell me of the walrus")
    snippet = results.get_by_test_id("search-snippet")
    # The message's `<b>` is never an element; only the matches are: <mark>s. (SQLite's
    # snippet shows it as text; PostgreSQL's ts_headline leaves tag-like words out.)
    expect(snippet).to_contain_text("is big; the walrus naps")
    expect(snippet.locator("mark")).to_have_text(["walrus", "walrus"])
    assert snippet.locator("b").count() == 0
    both_screens(page, "search-results")

    results.first.get_by_role("button").click()
    expect(page.get_by_test_id("chat-title")).to_have_text("Tell me of the walrus")
    found = assistant(page)
    expect(found).to_have_class("msg msg-assistant msg-found")
    expect(found.get_by_test_id("message-content")).to_have_text(
        "A <b>walrus</b> is big; the walrus naps."
    )

    page.get_by_test_id("search-input").fill("narwhal")
    expect(page.get_by_test_id("search-empty")).to_have_text("No messages match.")
    both_screens(page, "search-no-results")
    page.get_by_test_id("search-input").press("Escape")
    expect(page.get_by_test_id("search-results")).to_be_hidden()
    expect(page.get_by_test_id("conversation-item")).to_have_count(3)


def test_the_open_conversation_exports_as_a_download(page, app_url, fake):
    fake.enqueue(Behaviour(tokens=["Low tide at ", "noon."]))
    page.goto(app_url)
    expect(page.get_by_test_id("export")).to_be_hidden()  # nothing open yet
    send(page, "When is low tide?")
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    expect(page.get_by_test_id("export")).to_be_visible()
    both_screens(page, "export-links")

    with page.expect_download() as markdown_download:
        page.get_by_test_id("export-markdown").click()
    download = markdown_download.value
    assert download.suggested_filename.startswith("When-is-low-tide-")
    assert download.suggested_filename.endswith(".md")
    text = Path(download.path()).read_text(encoding="utf-8")
    assert text.startswith("# When is low tide?\n") and "Low tide at noon." in text

    with page.expect_download() as json_download:
        page.get_by_test_id("export-json").click()
    assert json_download.value.suggested_filename.endswith(".json")
