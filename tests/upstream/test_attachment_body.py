"""A body with attachments as the OpenRouter client sends it: the placeholders become
`image_url` and `file` parts with data URLs made from the file's chunks as they are read, the
length is known before a byte goes, and the body is the JSON it says
(app/upstream/attachment_body.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import pytest

from app.core.attachments import Attachment, MediaType, with_attachments
from app.upstream.attachment_body import AttachmentMissing, encode, has_attachments

# Sizes that leave 0, 1 and 2 bytes over a group of three, in chunks that do too.
FILES = {
    "a" * 32: bytes(range(256)) * 40 + b"x",
    "b" * 32: b"%PDF-" + bytes(1000),
    "c" * 32: b"",
}


def reader(chunk: int):
    async def read(upload_id: str) -> AsyncIterator[bytes]:
        data = FILES[upload_id]
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]

    return read


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


def body_with(*attachments: Attachment) -> dict:
    return {
        "model": "openai/gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief. \u00e9\u4e2d"},
            {"role": "user", "content": with_attachments("what is it?", attachments)},
        ],
    }


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 1024, 1 << 20])
def test_the_parts_carry_the_files_and_the_length_is_exact(chunk):
    image = Attachment("a" * 32, MediaType.PNG, "shot.png", len(FILES["a" * 32]), 10, 10)
    pdf = Attachment("b" * 32, MediaType.PDF, 'a "quoted" name.pdf', len(FILES["b" * 32]), pages=1)
    empty = Attachment("c" * 32, MediaType.GIF, "e.gif", 0, 1, 1)
    body = body_with(image, pdf, empty)
    body["messages"][1]["content"][1]["cache_control"] = {"type": "ephemeral"}
    assert has_attachments(body) and not has_attachments(body_with())
    length, stream = encode(body, reader(chunk))
    sent = asyncio.run(collect(stream))
    assert len(sent) == length
    text, png, file, gif = json.loads(sent)["messages"][1]["content"]
    assert text == {"type": "text", "text": "what is it?"}
    assert (
        png["image_url"]["url"]
        == "data:image/png;base64," + base64.b64encode(FILES["a" * 32]).decode()
    )
    assert png["cache_control"] == {"type": "ephemeral"}
    assert file["file"]["filename"] == 'a "quoted" name.pdf'
    assert base64.b64decode(file["file"]["file_data"].split(",", 1)[1]) == FILES["b" * 32]
    assert gif["image_url"]["url"] == "data:image/gif;base64,"
    assert json.loads(sent)["messages"][0] == body["messages"][0]


def test_a_file_deleted_while_it_is_sent_fails_the_request():
    gone = Attachment("a" * 32, MediaType.PNG, "shot.png", len(FILES["a" * 32]) + 5, 10, 10)
    _, stream = encode(body_with(gone), reader(1024))
    with pytest.raises(AttachmentMissing):
        asyncio.run(collect(stream))
