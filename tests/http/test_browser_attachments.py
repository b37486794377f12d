"""Attachments on the page and in the coach widget (issue 35), in a real headless Chromium
against a real server: attach with the button, paste an image, drop a file, see the chips,
remove one before sending (the upload is deleted), send and see the thumbnail and the PDF's
chip on the message, again after a reload; an SVG refused in a sentence; an image for a model
that cannot read images warned about and refused; a file too large, the space for attachments
full; signed in through a host app, the coach reading a PDF and a thumbnail fetched with the
token. axe-core on each state; screenshots of the composer with chips and of a message with
attachments, at desktop size and at 375 px, in the test's tmp dir.
"""

from __future__ import annotations

import base64
import re
import struct
import zlib
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from app.dev.simulator import Behaviour
from app.settings import DEFAULT_AGENTS_FILE
from tests.http import test_browser
from tests.http.identity_support import SECRET, token
from tests.http.test_browser import (
    JWT_SETTINGS,
    STREAM_TIMEOUT,
    assistant,
    conversation,
    host_gives_tokens,
    open_conversation_id,
)
from tests.http.test_browser_daily_use import DESKTOP, accessible

pytestmark = pytest.mark.any_database

browser, page = test_browser.browser, test_browser.page
PHONE = {"width": 375, "height": 812}
MYTHOMAX = "gryphe/mythomax-l2-13b"  # reads text only
# The refusals' test: files up to 40 kB, 50 kB of them kept per user (the defaults: 10 MB, 100 MB).
LIMIT = 40_000
QUOTA = 50_000


# -- files, made here: real PNG and PDF bytes, no image or PDF library needed ------------------


def png(width: int = 320, height: int = 200) -> bytes:
    """A real RGB PNG: a diagonal gradient, so a thumbnail shows something."""
    rows = b"".join(
        b"\x00"
        + b"".join(
            bytes((40 + 180 * x // width, 90 + 120 * y // height, 200 - 120 * x // width))
            for x in range(width)
        )
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pdf(pages: int = 2, text: str = "Draft", *, comment: int = 0) -> bytes:
    """A valid PDF of `pages` pages, a line of text on each, its cross-reference table exact;
    `comment`: that many bytes of comment after the header."""
    font = 3 + 2 * pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>",
    ]
    for i in range(pages):
        stream = f"BT /F1 18 Tf 72 720 Td ({text}, page {i + 1}) Tj ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R"
            f" /Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n" + (b"%" + b"x" * comment + b"\n" if comment else b""))
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    trailer = f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return bytes(out + trailer.encode())


def padded(pages: int, size: int) -> bytes:
    """A valid PDF of about `size` bytes: a comment after its header, which readers skip."""
    small = pdf(pages)
    return pdf(pages, comment=max(size - len(small) - 2, 0))


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="9"/></svg>'


# -- the ways a file reaches the composer -------------------------------------------------------


def choose(page: Page, button: str, *files: tuple[str, str, bytes], keyboard: bool = False) -> None:
    """Press an attach button (a click, or Enter on it) and pick files in the chooser it opens."""
    with page.expect_file_chooser() as chooser:
        if keyboard:
            page.get_by_test_id(button).focus()
            page.keyboard.press("Enter")
        else:
            page.get_by_test_id(button).click()
    chooser.value.set_files(
        [{"name": name, "mimeType": kind, "buffer": data} for name, kind, data in files]
    )


# A DataTransfer holding one file, as the clipboard or a drag gives it to the page.
TRANSFER = """([name, type, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  return transfer;
}"""


def paste(page: Page, name: str, kind: str, data: bytes) -> None:
    """A screenshot pasted into the message box: a paste event with only a file in it."""
    transfer = page.evaluate_handle(TRANSFER, [name, kind, base64.b64encode(data).decode()])
    page.get_by_test_id("composer-input").focus()
    page.evaluate(
        """(transfer) => document.querySelector('[data-testid="composer-input"]').dispatchEvent(
             new ClipboardEvent('paste', { clipboardData: transfer, bubbles: true }))""",
        transfer,
    )


def drop(page: Page, name: str, kind: str, data: bytes) -> None:
    """A file dragged over the chat (the composer shows where it lands) and dropped on it."""
    transfer = page.evaluate_handle(TRANSFER, [name, kind, base64.b64encode(data).decode()])
    messages = page.get_by_test_id("message-list")
    messages.dispatch_event("dragover", {"dataTransfer": transfer})
    expect(page.get_by_test_id("composer")).to_have_class("composer drop-target")
    page.get_by_test_id("composer-input").dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.get_by_test_id("composer")).to_have_class("composer")


def chips(page: Page):
    return page.get_by_test_id("composer-attachments").get_by_test_id("attachment")


def uploaded(page: Page, count: int) -> None:
    """`count` chips on the composer, every one uploaded (none still busy)."""
    expect(chips(page)).to_have_count(count)
    expect(page.locator('[data-testid="composer-attachments"] [aria-busy="true"]')).to_have_count(0)


def thumbnails_shown(scope) -> None:
    """Every thumbnail in `scope` has loaded its image (a broken one has no natural width; one
    whose source is still being fetched has none yet, and is waited for)."""
    thumbs = scope.get_by_test_id("attachment-thumbnail")
    assert thumbs.count() > 0
    for i in range(thumbs.count()):
        thumbs.nth(i).page.wait_for_function(
            "(img) => img.currentSrc && img.complete && img.naturalWidth > 0",
            arg=thumbs.nth(i).element_handle(),
        )


def sizes(page: Page, tmp_path: Path, name: str) -> None:
    """Screenshots at desktop size and at 375 px (the composer and the page no wider than the
    screen), each checked with axe-core; the viewport is left as it was."""
    before = page.viewport_size
    for size, label in ((DESKTOP, "desktop"), (PHONE, "phone-375")):
        page.set_viewport_size(size)
        if size is PHONE:
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            composer = page.get_by_test_id("composer").bounding_box()
            assert composer and composer["x"] >= 0
            assert composer["x"] + composer["width"] <= PHONE["width"]
        page.screenshot(path=tmp_path / f"{name}-{label}.png", full_page=size is PHONE)
        accessible(page, f"{name} ({label})")
    page.set_viewport_size(before)


def upstream_parts(fake) -> list[str]:
    """The kinds of content parts in the last user message the fake OpenRouter was sent."""
    message = fake.requests[-1]["body"]["messages"][-1]
    content = message["content"]
    return ["text"] if isinstance(content, str) else [part["type"] for part in content]


# -- 1. attach, paste, drop, remove, send, read back -------------------------------------------


def test_files_attached_every_way_go_with_the_message_and_come_back_with_it(
    page, start_server, fake, tmp_path
):
    server = start_server()
    fake.enqueue(Behaviour(tokens=["A gradient, and a two-page draft."]))
    page.goto(server.url)

    # The button (by keyboard: it is a real button with a name), then a paste, then a drop.
    button = page.get_by_role("button", name="Attach images or PDFs")
    expect(button).to_be_visible()
    choose(
        page,
        "attach",
        ("chart.png", "image/png", png()),
        ("draft.pdf", "application/pdf", pdf(2)),
        keyboard=True,
    )
    uploaded(page, 2)
    paste(page, "image.png", "image/png", png(120, 90))  # as Chromium names a pasted image
    uploaded(page, 3)
    drop(page, "notes.pdf", "application/pdf", pdf(1, "Notes"))
    uploaded(page, 4)

    names = chips(page).get_by_test_id("attachment-name")
    expect(names.nth(0)).to_have_text("chart.png")
    expect(names.nth(1)).to_have_text("draft.pdf")
    expect(names.nth(3)).to_have_text("notes.pdf")
    expect(chips(page).nth(1).get_by_test_id("attachment-facts")).to_have_text(
        re.compile(r"^2 pages · [\d.]+ (KB|bytes)$")
    )
    expect(chips(page).nth(3).get_by_test_id("attachment-facts")).to_contain_text("1 page ·")
    thumbnails_shown(page.get_by_test_id("composer-attachments"))
    page.get_by_test_id("composer-input").fill("What do these show?")
    sizes(page, tmp_path, "composer-with-chips")

    # Removed before sending: the chip goes, and so does the upload on the server.
    dropped_id = chips(page).nth(3).get_attribute("data-attachment-id")
    assert dropped_id
    assert httpx.get(f"{server.url}/api/uploads/{dropped_id}/content", timeout=5).status_code == 200
    chips(page).nth(3).get_by_role("button", name="Remove notes.pdf").click()
    uploaded(page, 3)
    expect(names).to_have_text(["chart.png", "draft.pdf", "image.png"])
    assert httpx.get(f"{server.url}/api/uploads/{dropped_id}/content", timeout=5).status_code == 404
    kept = [chips(page).nth(i).get_attribute("data-attachment-id") for i in range(3)]

    page.get_by_test_id("composer-input").press("Enter")
    expect(assistant(page)).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(chips(page)).to_have_count(0)
    expect(page.get_by_test_id("composer-attachments")).to_be_hidden()
    # Upstream, the message carried its text, the two images and the PDF.
    assert sorted(upstream_parts(fake)) == ["file", "image_url", "image_url", "text"]

    def shown_on_the_message() -> None:
        question = page.locator('[data-testid="message"][data-role="user"]')
        on_message = question.get_by_test_id("message-attachments").get_by_test_id("attachment")
        expect(on_message).to_have_count(3)
        ids = [on_message.nth(i).get_attribute("data-attachment-id") for i in range(3)]
        assert ids == kept
        expect(on_message.nth(0).get_by_test_id("attachment-name")).to_have_text("chart.png")
        expect(on_message.nth(1)).to_have_attribute("data-type", "application/pdf")
        expect(on_message.nth(1).get_by_test_id("attachment-name")).to_have_text("draft.pdf")
        expect(on_message.nth(1).get_by_test_id("attachment-facts")).to_contain_text("2 pages ·")
        thumbnails_shown(question)

    shown_on_the_message()
    sizes(page, tmp_path, "message-with-attachments")

    # Read back: the conversation gives the message its attachments, and the page shows them.
    stored = conversation(server.url, open_conversation_id(page))["messages"][0]
    assert [a["id"] for a in stored["attachments"]] == kept
    page.reload()
    expect(assistant(page)).to_have_attribute("data-status", "complete")
    shown_on_the_message()
    sizes(page, tmp_path, "message-with-attachments-reloaded")

    # A thumbnail opens its image at the size of the screen; Escape closes it.
    view = page.get_by_role("button", name="View chart.png")
    view.click()
    viewer = page.get_by_test_id("image-viewer")
    expect(viewer).to_be_visible()
    expect(page.get_by_test_id("image-viewer-close")).to_be_focused()
    shown = page.get_by_test_id("image-viewer-image")
    assert shown.evaluate("(img) => img.naturalWidth") == 320
    accessible(page, "an image opened")
    page.screenshot(path=tmp_path / "image-opened-desktop.png")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(view).to_be_focused()


# -- 2. refusals: a type, a model that cannot read images ---------------------------------------


@pytest.fixture
def text_model_allowed(tmp_path: Path) -> str:
    """An agents file whose chat agent also allows a model that reads text only."""
    shipped = DEFAULT_AGENTS_FILE.read_text(encoding="utf-8")
    agents = tmp_path / "agents.toml"
    agents.write_text(
        shipped.replace("[chat]\n", f'[chat]\nallowed_models = ["{MYTHOMAX}"]\n', 1),
        encoding="utf-8",
    )
    return str(agents)


def test_what_cannot_be_read_is_refused_in_plain_words(
    page, start_server, fake, tmp_path, text_model_allowed
):
    server = start_server(
        agents_file=text_model_allowed,
        max_upload_bytes=LIMIT,
        upload_quota_bytes=QUOTA,
        pdf_engine="off",
    )
    page.goto(server.url)

    # An SVG (an image, but one that can carry script): refused, no chip, the reason beside
    # the composer.
    choose(page, "attach", ("logo.svg", "image/svg+xml", SVG))
    error = page.get_by_test_id("attach-error")
    expect(error).to_have_text(
        "“logo.svg” was not attached: it is not a file the assistant can read. "
        "Attach PNG, JPEG, WebP or GIF images, or PDF files."
    )
    expect(chips(page)).to_have_count(0)

    # Too large: refused before the server reads it whole, and said so.
    choose(page, "attach", ("scan.pdf", "application/pdf", padded(1, 3 * LIMIT)))
    expect(error).to_have_text(re.compile(r"^“scan\.pdf” was not attached: it is larger than"))
    expect(chips(page)).to_have_count(0)

    # Over the user's space for attachments: two PDFs fit, the third does not; removing one
    # makes room again.
    for name in ("a.pdf", "b.pdf"):
        choose(page, "attach", (name, "application/pdf", padded(1, QUOTA // 2 - 500)))
    uploaded(page, 2)
    expect(error).to_be_hidden()
    choose(page, "attach", ("c.pdf", "application/pdf", padded(1, QUOTA // 2 - 500)))
    expect(error).to_contain_text("“c.pdf” was not attached: it does not fit in your space")
    uploaded(page, 2)
    sizes(page, tmp_path, "refused-for-the-quota")
    for name in ("a.pdf", "b.pdf"):
        page.get_by_role("button", name=f"Remove {name}").click()
    uploaded(page, 0)

    # The picker says which models read images and PDFs.
    page.get_by_test_id("model-button").click()
    default = page.locator('[data-testid="model-option"][data-model-id="openai/gpt-4o"]')
    text_only = page.locator(f'[data-testid="model-option"][data-model-id="{MYTHOMAX}"]')
    expect(default.get_by_test_id("model-badge-images")).to_have_text("Images")
    expect(default.get_by_test_id("model-badge-pdf")).to_have_text("PDF")
    expect(text_only.get_by_test_id("model-badge-images")).to_have_count(0)
    expect(text_only.get_by_test_id("model-badge-pdf")).to_have_count(0)
    text_only.click()

    # An image for that model: a warning before sending, then the server's refusal, and
    # nothing written.
    choose(page, "attach", ("screen.png", "image/png", png(120, 90)))
    uploaded(page, 1)
    expect(error).to_be_hidden()
    warning = page.get_by_test_id("attach-warning")
    expect(warning).to_contain_text("cannot read images")
    page.get_by_test_id("composer-input").fill("What is on my screen?")
    sizes(page, tmp_path, "image-for-a-text-model")
    page.get_by_test_id("composer-input").press("Enter")
    expect(page.get_by_test_id("app-error")).to_have_text(
        "Not sent: MythoMax 13B cannot read images. "
        "Choose a model marked Images, or remove the image."
    )
    expect(page.get_by_test_id("message")).to_have_count(0)
    assert httpx.get(f"{server.url}/api/conversations", timeout=5).json()["conversations"] == []
    assert fake.requests == []
    # The chip stays, for another model.
    uploaded(page, 1)

    # A PDF, where the operator turned OpenRouter's parser off: refused for that model too.
    page.get_by_role("button", name="Remove screen.png").click()
    expect(warning).to_be_hidden()
    choose(page, "attach", ("brief.pdf", "application/pdf", pdf(1)))
    uploaded(page, 1)
    page.get_by_test_id("composer-input").press("Enter")
    expect(page.get_by_test_id("app-error")).to_have_text(
        "Not sent: MythoMax 13B cannot read PDF files. "
        "Choose a model marked PDF, or remove the file."
    )
    expect(page.get_by_test_id("message")).to_have_count(0)
    assert fake.requests == []
    # Choosing a model that reads them answers the refusal.
    page.get_by_test_id("model-button").click()
    page.locator('[data-testid="model-option"][data-model-id="openai/gpt-4o"]').click()
    expect(warning).to_be_hidden()
    expect(page.get_by_test_id("app-error")).to_be_hidden()
    sizes(page, tmp_path, "refused")


# -- 3. the coach reads a PDF -----------------------------------------------------------------


def test_signed_in_the_coach_reads_a_pdf_and_thumbnails_come_with_the_token(
    page, start_server, fake, tmp_path
):
    server = start_server(**JWT_SETTINGS)
    host_gives_tokens(page, token(SECRET, "HS256", sub="ann"))
    fake.enqueue(Behaviour(tokens=["Page two repeats page one."]))
    page.goto(server.url)
    panel = page.get_by_test_id("coach-panel")

    choose(page, "coach-attach", ("essay.pdf", "application/pdf", pdf(2, "Essay")))
    document = panel.get_by_test_id("coach-document")
    expect(document).to_have_attribute("aria-busy", "false")
    expect(document.get_by_test_id("coach-document-name")).to_have_text("essay.pdf")
    expect(document.get_by_test_id("coach-document-facts")).to_contain_text("2 pages ·")
    expect(panel.get_by_test_id("coach-attach")).to_be_hidden()
    panel.get_by_test_id("coach-question").fill("Is this clear?")
    sizes(page, tmp_path, "coach-with-a-document")

    panel.get_by_test_id("coach-ask").click()
    expect(panel).to_have_attribute("data-status", "complete", timeout=STREAM_TIMEOUT)
    expect(panel.get_by_test_id("coach-output")).to_have_text("Page two repeats page one.")
    assert "file" in upstream_parts(fake)
    # The document stays for the next question, until removed.
    expect(document).to_be_visible()
    document.get_by_role("button", name="Remove essay.pdf").click()
    expect(document).to_be_hidden()
    expect(panel.get_by_test_id("coach-attach")).to_be_focused()

    # An <img> cannot send the token: the page fetches the image with it and shows it as a
    # data: URL (the token never goes in a URL). Words are needed to send the files.
    paste(page, "image.png", "image/png", png(120, 90))
    uploaded(page, 1)
    thumbnails_shown(page.get_by_test_id("composer-attachments"))
    thumb = page.get_by_test_id("attachment-thumbnail")
    assert thumb.get_attribute("src").startswith("data:image/png;base64,")
    page.get_by_test_id("composer-input").press("Enter")
    expect(page.get_by_test_id("attach-error")).to_have_text(
        "Add a few words to go with the files, then send."
    )
    expect(page.get_by_test_id("message")).to_have_count(0)
