"""Attachments: what every floor knows of an upload that rides in a turn.

A turn's user message names uploads (images and PDFs, app/http/routes/uploads.py). In the
run's request they stand as placeholder content parts, `{"type": "attachment", "attachment":
{id, type, name, size, width, height, pages}}`, a few hundred bytes whatever the file's size:
the budget's bound and the context fitting measure the request with them (each by its token
bound below), and only the OpenRouter client turns them into the real parts (`image_url` and
`file`, data URLs) while it streams the body, reading the file from the database in chunks
(app/upstream/attachment_body.py). So a file is never held whole in memory, nor counted by its
base64 bytes as if they were text.

The token bounds are what the providers OpenRouter routes to say an input may cost at most,
since no tokenizer here can count an image or a PDF:
- an image: the larger of 2,500 tokens (OpenAI's patch models: at most 1,536 patches times
  their 1.62 multiplier, 2,489; Anthropic: about 1,600 for an image it has scaled to 1.15
  megapixels; OpenAI's tiled models: 1,445 at most) and 258 per 768-pixel tile (Gemini),
  by the image's pixel size;
- a PDF: 3,000 tokens a page (Anthropic reads each page as its text and an image of it, and
  says 1,500 to 3,000 tokens a page; a parser's extracted text is less).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

# At most this many attachments on one message.
MAX_ATTACHMENTS = 10
PLACEHOLDER = "attachment"
IMAGE_TOKENS = 2_500
TILE_PIXELS = 768
TILE_TOKENS = 258
PDF_PAGE_TOKENS = 3_000
# What OpenRouter's file-parser engines charge a page (USD): cloudflare-ai is free, mistral-ocr
# $2 per 1,000 pages.
PARSER_PAGE_PRICES = {"cloudflare-ai": Decimal(0), "mistral-ocr": Decimal("0.002")}


class MediaType(StrEnum):
    PNG = "image/png"
    JPEG = "image/jpeg"
    WEBP = "image/webp"
    GIF = "image/gif"
    PDF = "application/pdf"

    @property
    def is_image(self) -> bool:
        return self is not MediaType.PDF


@dataclass(frozen=True, slots=True)
class Attachment:
    """An upload as a message carries it (its bytes stay in the database)."""

    id: str
    type: MediaType
    name: str
    size: int
    width: int | None = None
    height: int | None = None
    pages: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        return cls(
            id=data["id"],
            type=MediaType(data["type"]),
            name=data["name"],
            size=int(data["size"]),
            width=data.get("width"),
            height=data.get("height"),
            pages=data.get("pages"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": str(self.type),
            "name": self.name,
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "pages": self.pages,
        }

    @property
    def is_image(self) -> bool:
        return self.type.is_image

    def part(self) -> dict[str, Any]:
        """Its placeholder content part in a run's request."""
        return {"type": PLACEHOLDER, PLACEHOLDER: self.to_json()}

    def token_bound(self) -> int:
        """The most prompt tokens it may cost (see the module doc)."""
        if self.is_image:
            tiles = math.ceil((self.width or 1) / TILE_PIXELS) * math.ceil(
                (self.height or 1) / TILE_PIXELS
            )
            return max(IMAGE_TOKENS, TILE_TOKENS * tiles)
        return PDF_PAGE_TOKENS * max(self.pages or 1, 1)


def with_attachments(text: str, attachments: Sequence[Attachment]) -> str | list[dict[str, Any]]:
    """A user message's content: its text alone, or its text and a part per attachment."""
    if not attachments:
        return text
    return [{"type": "text", "text": text}, *(a.part() for a in attachments)]


def attachments_of(message: dict[str, Any]) -> Iterator[Attachment]:
    """The attachments a request's message carries as placeholders."""
    content = message.get("content")
    if not isinstance(content, list):
        return
    for part in content:
        if isinstance(part, dict) and part.get("type") == PLACEHOLDER:
            yield Attachment.from_json(part[PLACEHOLDER])


def in_messages(messages: Sequence[dict[str, Any]]) -> Iterator[Attachment]:
    for message in messages:
        yield from attachments_of(message)


def readable(message: dict[str, Any], *, images: bool, files: bool) -> dict[str, Any]:
    """`message` with each attachment a model cannot read (`images`, `files`: whether it reads
    them) replaced by a line of text that names it: an earlier turn's image is not what makes a
    later turn on a model without image input fail."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == PLACEHOLDER:
            attachment = Attachment.from_json(part[PLACEHOLDER])
            if images if attachment.is_image else files:
                parts.append(part)
                continue
            what = "image" if attachment.is_image else "PDF"
            part = {
                "type": "text",
                "text": f"[{what} {attachment.name}: not sent, this model does not read {what}s]",
            }
        parts.append(part)
    return {**message, "content": parts}


def text_of(content: str | list[dict[str, Any]]) -> str:
    """A user message's text, without its attachments."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")
