"""A request body with attachments, streamed: the placeholders of app/core/attachments.py become
OpenRouter's content parts, their files read from the database a chunk at a time.

    image  {"type": "image_url", "image_url": {"url": "data:image/png;base64,…"}}
    PDF    {"type": "file", "file": {"filename": "a.pdf",
                                     "file_data": "data:application/pdf;base64,…"}}

Data URLs, so OpenRouter never has to reach this server. The body is the JSON of the request
with a marker where each file's base64 goes, cut at the markers; the file's base64 is made as
its chunks arrive (a chunk's last bytes that do not fill a group of three wait for the next),
so what is held at once is a chunk, whatever the file's size. Its length is known before a
byte is sent (the JSON's, plus 4 * ceil(size / 3) per file), so the request goes with a
`Content-Length`, not chunked: every HTTP server and proxy takes that.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.core.attachments import PLACEHOLDER, Attachment

# The bytes of an upload, in order, a chunk at a time (app/storage/uploads.py's `chunks`).
ReadAttachment = Callable[[str], AsyncIterator[bytes]]


class AttachmentMissing(Exception):
    """An attachment's bytes were not all there (deleted while its turn was being sent)."""


def has_attachments(body: dict[str, Any]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == PLACEHOLDER
        for message in body.get("messages", ())
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _wire_part(attachment: Attachment, marker: str) -> dict[str, Any]:
    data = f"data:{attachment.type};base64,{marker}"
    if attachment.is_image:
        return {"type": "image_url", "image_url": {"url": data}}
    return {"type": "file", "file": {"filename": attachment.name, "file_data": data}}


def encode(body: dict[str, Any], read: ReadAttachment) -> tuple[int, AsyncIterator[bytes]]:
    """The body's length in bytes, and its bytes as an async iterator (one per request: a
    retried request takes a new one)."""
    nonce = uuid.uuid4().hex
    files: list[Attachment] = []

    def wire(message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content")
        if not isinstance(content, list):
            return message
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == PLACEHOLDER:
                attachment = Attachment.from_json(part[PLACEHOLDER])
                wired = _wire_part(attachment, f"@@{nonce}:{len(files)}@@")
                if "cache_control" in part:  # a prompt-cache breakpoint stays where it was
                    wired["cache_control"] = part["cache_control"]
                parts.append(wired)
                files.append(attachment)
            else:
                parts.append(part)
        return {**message, "content": parts}

    wired = {**body, "messages": [wire(m) for m in body.get("messages", ())]}
    text = json.dumps(wired, ensure_ascii=False, separators=(",", ":"))
    pieces = [piece.encode() for piece in _split(text, nonce, len(files))]
    length = sum(map(len, pieces)) + sum(4 * -(-f.size // 3) for f in files)

    async def stream() -> AsyncIterator[bytes]:
        for index, attachment in enumerate(files):
            yield pieces[index]
            async for encoded in _base64(attachment, read):
                yield encoded
        yield pieces[-1]

    return length, stream()


def _split(text: str, nonce: str, count: int) -> list[str]:
    pieces = []
    for index in range(count):
        before, _, text = text.partition(f"@@{nonce}:{index}@@")
        pieces.append(before)
    return [*pieces, text]


async def _base64(attachment: Attachment, read: ReadAttachment) -> AsyncIterator[bytes]:
    rest = b""
    seen = 0
    async for chunk in read(attachment.id):
        seen += len(chunk)
        data = rest + chunk
        whole = len(data) - len(data) % 3
        rest = data[whole:]
        if whole:
            yield base64.b64encode(data[:whole])
    if seen != attachment.size:
        raise AttachmentMissing(f"attachment {attachment.id} is no longer stored")
    if rest:
        yield base64.b64encode(rest)
