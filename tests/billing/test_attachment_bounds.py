"""Attachments in the budget's bounds (app/billing/budgets.py, app/core/attachments.py): each
file counts its token bound, not its bytes, in the prompt and in fitting; images their
model's image price and PDFs their parser's page price in the worst case."""

from __future__ import annotations

from decimal import Decimal

from app.billing.budgets import (
    file_charges,
    message_token_bound,
    prompt_token_bound,
    worst_case,
)
from app.core.attachments import Attachment, MediaType, with_attachments
from app.upstream.models_catalog import Pricing

IMAGE = Attachment("a" * 32, MediaType.PNG, "shot.png", 9_000_000, 4000, 3000)
SMALL = Attachment("b" * 32, MediaType.JPEG, "s.jpg", 1000, 64, 64)
PDF = Attachment("c" * 32, MediaType.PDF, "doc.pdf", 5_000_000, pages=12)


def test_each_file_counts_its_token_bound_whatever_its_size():
    plain = {"role": "user", "content": "hi"}
    attached = {"role": "user", "content": with_attachments("hi", [IMAGE, SMALL, PDF])}
    assert SMALL.token_bound() == 2_500  # at least the patch models' 2,489
    assert IMAGE.token_bound() == 258 * 6 * 4  # Gemini's 768-pixel tiles: 6 x 4
    assert PDF.token_bound() == 12 * 3_000
    files = IMAGE.token_bound() + SMALL.token_bound() + PDF.token_bound()
    assert message_token_bound(attached) >= message_token_bound(plain) + files
    # Far below the base64 of 14 MB: the bound is the files', not their bytes'.
    assert message_token_bound(attached) < files + 2_000
    body = {"model": "m", "messages": [attached]}
    assert prompt_token_bound(body) >= files


def test_the_worst_case_prices_images_and_parsed_pages():
    pricing = Pricing(input=Decimal(1), output=Decimal(2), request=None, image=Decimal("0.01"))
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": with_attachments("x", [SMALL, PDF])}],
    }
    assert file_charges(body) == (1, Decimal(0))  # no parser: the model reads the PDF
    body["plugins"] = [{"id": "file-parser", "pdf": {"engine": "mistral-ocr"}}]
    images, parsing = file_charges(body)
    assert (images, parsing) == (1, 12 * Decimal("0.002"))
    without = worst_case(prompt_tokens=1000, max_tokens=10, pricing=pricing)
    with_files = worst_case(
        prompt_tokens=1000, max_tokens=10, pricing=pricing, images=images, parsing=parsing
    )
    assert with_files - without == (Decimal("0.01") + 12 * Decimal("0.002")) * 10**12
    body["plugins"] = [{"id": "file-parser", "pdf": {"engine": "cloudflare-ai"}}]
    assert file_charges(body) == (1, Decimal(0))  # free
