"""The wire format (`app.replies.wire`), server-free: every event type encoded and decoded back,
whole and cut at every byte, with each of SSE's line ends; the Redis mirror's entries; the
event-length record both ways; the non-stream body. And the bytes themselves, pinned: a change
here is a change every client sees."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from httpx_sse._decoders import SSEDecoder

from app.core.states import MessageStatus
from app.replies.wire import (
    FIELD,
    FINAL_EVENTS,
    PING,
    REPLY_EVENT_ID,
    RETRY_FIELD,
    Event,
    FrameDecoder,
    LogEvent,
    decode_frame,
    entry_id,
    event_lengths,
    final_body,
    final_event,
    frames,
    from_entry,
    meta_payload,
    reply_id_prefix,
    stored_events,
    succeeded,
    to_entry,
)

MESSAGE_ID = "0123456789abcdef0123456789abcdef"
CITATION = {  # `Citation.to_json`'s shape
    "url": "https://example.com/é",
    "title": "Ex",
    "content": "a quote",
    "start_index": 0,
    "end_index": 3,
}


def _final(status: MessageStatus, **overrides: Any) -> tuple[Event, dict[str, Any]]:
    values: dict[str, Any] = {
        "status": status,
        "message_id": MESSAGE_ID,
        "finish_reason": "stop",
        "model": "openai/gpt-4o",
        "prompt_tokens": 12,
        "completion_tokens": 7,
        "reasoning_tokens": 2,
        "cost": Decimal("0.000123"),
        "error_code": None,
        "error_message": None,
        "cache_saved": 2_400_000_000,  # pico-dollars
    }
    return final_event(**{**values, **overrides})


# One of each event a reply sends, with text that is not ASCII (a cut may fall inside a
# character) and JSON that escapes (a newline in content stays on the data line).
EXAMPLES: dict[Event, dict[str, Any]] = {
    Event.META: meta_payload(
        conversation_id="c" * 32,
        message_id=MESSAGE_ID,
        user_message_id="u" * 32,
        agent="chat",
        model="openai/gpt-4o",
    ),
    Event.REASONING: {"content": "thinking… über\nline two"},
    Event.DELTA: {"content": 'héllo 👋 "quoted"\r\n'},
    Event.ANNOTATION: CITATION,
    Event.DONE: _final(MessageStatus.COMPLETE)[1],
    Event.ERROR: _final(MessageStatus.ERROR, error_code="upstream_503", error_message="busy")[1],
}


def test_every_event_has_an_example():
    assert set(EXAMPLES) == set(Event)


@pytest.mark.parametrize("name", list(Event))
def test_an_event_decodes_to_itself(name):
    event = LogEvent.make(7, name, EXAMPLES[name])
    decoded = decode_frame(event.frame)
    assert decoded == event
    assert decoded.payload == EXAMPLES[name]


@pytest.mark.parametrize("line_end", ["\n", "\r", "\r\n"])
@pytest.mark.parametrize("name", list(Event))
def test_a_frame_cut_at_every_byte_decodes_the_same(name, line_end):
    """As a socket or a proxy may cut it, with each of SSE's line ends (openai-python's
    tests/test_sse_framing.py does the same for its decoder)."""
    event = LogEvent.make(7, name, EXAMPLES[name])
    text = event.frame.replace(b"\n", line_end.encode())
    for cut in range(len(text) + 1):
        decoder = FrameDecoder()
        decoded = decoder.feed(text[:cut]) + decoder.feed(text[cut:]) + decoder.close()
        assert decoded == [event], (cut, text[:cut], text[cut:])


@pytest.mark.parametrize("line_end", ["\n", "\r", "\r\n"])
def test_a_whole_stream_byte_by_byte_decodes_to_its_events(line_end):
    """A reply as a response sends it: `retry:` before event 1, a keep-alive comment between
    batches; fed one byte at a time."""
    events = [LogEvent.make(index, name, EXAMPLES[name]) for index, name in enumerate(Event, 1)]
    body = RETRY_FIELD + frames(events[:3]) + PING + frames(events[3:])
    body = body.replace(b"\n", line_end.encode())
    decoder = FrameDecoder()
    decoded = [event for byte in range(len(body)) for event in decoder.feed(body[byte : byte + 1])]
    assert decoded + decoder.close() == events


def test_the_bytes_on_the_wire():
    """Pinned: every client (app.js, coach.js, httpx-sse, the OpenAI-style SDKs' own
    decoders) reads exactly these."""
    event = LogEvent.make(3, Event.DELTA, {"content": "hé"})
    assert event.frame == 'id: 3\nevent: delta\ndata: {"content":"hé"}\n\n'.encode()
    assert event.data == '{"content":"hé"}'
    assert frames([event], reply_id_prefix(MESSAGE_ID)) == (
        f'id: {MESSAGE_ID}:3\nevent: delta\ndata: {{"content":"hé"}}\n\n'.encode()
    )
    assert PING == b": ping\n\n"
    assert RETRY_FIELD == b"retry: 1000\n"
    assert [str(name) for name in Event] == [
        "meta",
        "reasoning",
        "delta",
        "annotation",
        "done",
        "error",
    ]
    assert {str(name) for name in FINAL_EVENTS} == {"done", "error"}


# Every text a token can hold, as the characters JSON treats apart: quotes, backslashes, every
# control character, DEL, non-ASCII of each UTF-8 length, the line separators JavaScript once
# refused, emoji (a surrogate pair in UTF-16), and nothing at all.
TOKEN_TEXTS = [
    "",
    " tok0",
    'héllo 👋 "quoted"\\ \\n',
    "".join(map(chr, range(0x20))) + "\x7f",
    "\u2028\u2029 ∑ 中文 😀 \U0010fffd",
    "</script><!-- -->",
]


@pytest.mark.parametrize("name", [Event.DELTA, Event.REASONING])
@pytest.mark.parametrize("text", TOKEN_TEXTS)
def test_a_tokens_event_is_what_the_stdlib_encoder_wrote(name, text):
    """`LogEvent.content` (orjson, per token) writes the bytes `LogEvent.make` (the stdlib's
    json, compact and not ASCII-escaped: the encoder every token had before) writes."""
    event = LogEvent.content(12, name, text)
    assert event == LogEvent.make(12, name, {"content": text})
    assert event.payload == {"content": text}


def test_every_character_is_encoded_as_the_stdlib_encoded_it():
    """All of Unicode but the surrogates (which no UTF-8 text holds), in blocks."""
    characters = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for start in range(0, len(characters), 8192):
        text = "".join(characters[start : start + 8192])
        assert LogEvent.content(1, Event.DELTA, text).frame == (
            LogEvent.make(1, Event.DELTA, {"content": text}).frame
        ), hex(ord(characters[start]))


def test_a_tokens_bytes_on_the_wire():
    """Pinned, as `make`'s above: the frame of every token."""
    assert LogEvent.content(3, Event.DELTA, "hé").frame == (
        'id: 3\nevent: delta\ndata: {"content":"hé"}\n\n'.encode()
    )
    assert LogEvent.content(4, Event.REASONING, 'a "b"\n').frame == (
        b'id: 4\nevent: reasoning\ndata: {"content":"a \\"b\\"\\n"}\n\n'
    )


def test_another_decoder_reads_the_same_events():
    """httpx-sse (the tests' and many Python clients' decoder) agrees with ours."""
    events = [LogEvent.make(index, name, EXAMPLES[name]) for index, name in enumerate(Event, 1)]
    decoder = SSEDecoder()
    theirs = [
        decoded
        for line in (RETRY_FIELD + frames(events)).decode().splitlines()
        if (decoded := decoder.decode(line)) is not None
    ]
    assert [(int(e.id), e.event, e.data) for e in theirs] == [
        (e.id, e.event, e.data) for e in events
    ]


def test_the_one_step_forms_ids_name_the_reply():
    batch = [LogEvent.make(1, Event.META, EXAMPLES[Event.META])]
    sent = frames(batch, reply_id_prefix(MESSAGE_ID)).split(b"\n", 1)[0].decode()
    found = REPLY_EVENT_ID.fullmatch(sent.removeprefix("id: "))
    assert found is not None and found.groups() == (MESSAGE_ID, "1")


@pytest.mark.parametrize(
    "text",
    [
        b"id: 1\nevent: message\ndata: {}\n\n",  # not an event of a reply
        b"event: delta\ndata: {}\n\n",  # no id
        b"id: x\nevent: delta\ndata: {}\n\n",  # an id that is not a number
        b"id: 1\ndata: {}\n\n",  # no name: SSE's default, `message`
    ],
)
def test_what_is_not_a_reply_event_is_refused(text):
    with pytest.raises(ValueError):
        decode_frame(text)


def test_a_frame_written_otherwise_decodes_to_the_same_event():
    """SSE allows more than `LogEvent.make` writes: a comment, no space after the colon, the
    fields in another order, `retry:`. The event is the same, and so is its frame."""
    event = LogEvent.make(5, Event.DELTA, {"content": "a"})
    text = b': hi\nevent:delta\nretry: 10\ndata:{"content":"a"}\nid:5\n\n'
    assert decode_frame(text) == event
    assert decode_frame(text).frame == event.frame


def test_a_frame_holds_one_event():
    one = LogEvent.make(1, Event.DELTA, {"content": "a"})
    with pytest.raises(ValueError):
        decode_frame(one.frame + LogEvent.make(2, Event.DELTA, {"content": "b"}).frame)
    with pytest.raises(ValueError):
        decode_frame(one.frame[:-1])  # no blank line: not dispatched, as the spec says
    with pytest.raises(ValueError):
        decode_frame(PING)


@pytest.mark.parametrize("name", list(Event))
def test_a_mirror_entry_decodes_to_its_event(name):
    event = LogEvent.make(42, name, EXAMPLES[name])
    entry = entry_id(event.id).encode()  # Redis answers with bytes
    assert entry == b"0-42"
    assert from_entry(entry, to_entry(event)) == event


def test_a_mirror_entry_that_is_not_its_event_is_refused():
    event = LogEvent.make(42, Event.DELTA, {"content": "a"})
    with pytest.raises(ValueError):
        from_entry(b"0-41", to_entry(event))  # another id than its frame's
    with pytest.raises(ValueError):
        from_entry(b"0-42", {})
    with pytest.raises(ValueError):
        from_entry(b"0-42", {FIELD: b"garbage"})


def test_the_event_lengths_rebuild_the_same_events():
    """What a run records at a checkpoint, rebuilt by a replay: the same ids, frames and all."""
    meta = EXAMPLES[Event.META]
    streamed = [
        (Event.REASONING, "let me think"),
        (Event.REASONING, " — hard"),
        (Event.DELTA, "Hé"),
        (Event.ANNOTATION, CITATION),
        (Event.DELTA, "llo 👋"),
        (Event.REASONING, "more"),
        (Event.DELTA, "!"),
    ]
    live = [LogEvent.make(1, Event.META, meta)]
    parts: list[str] = []
    thoughts: list[str] = []
    citations: list[dict[str, Any]] = []
    for name, value in streamed:
        if name == Event.DELTA:
            parts.append(value)
        elif name == Event.REASONING:
            thoughts.append(value)
        else:
            citations.append(value)
        payload = value if name == Event.ANNOTATION else {"content": value}
        live.append(LogEvent.make(len(live) + 1, name, payload))

    lengths = event_lengths(live, parts, thoughts)
    assert lengths == [-12, -7, 2, 0, 5, -4, 1]  # code points, as Python counts
    rebuilt = stored_events(
        meta,
        content="".join(parts),
        reasoning="".join(thoughts),
        annotations=citations,
        lengths=lengths,
    )
    assert rebuilt == live


def test_a_reply_with_no_streamed_events_is_its_meta():
    meta = EXAMPLES[Event.META]
    assert event_lengths([LogEvent.make(1, Event.META, meta)], [], []) == []
    assert stored_events(meta, content="", reasoning="", annotations=[], lengths=[]) == [
        LogEvent.make(1, Event.META, meta)
    ]


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (MessageStatus.COMPLETE, Event.DONE),
        (MessageStatus.STOPPED, Event.DONE),
        (MessageStatus.ERROR, Event.ERROR),
        (MessageStatus.INTERRUPTED, Event.ERROR),
    ],
)
def test_each_ending_has_its_final_event(status, name):
    assert _final(status)[0] == name


def test_the_final_events_data():
    _, done = _final(MessageStatus.COMPLETE)
    assert done == {
        "message_id": MESSAGE_ID,
        "status": "complete",
        "finish_reason": "stop",
        "model": "openai/gpt-4o",
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 7,
            "total_tokens": 19,
            "reasoning_tokens": 2,
        },
        "cost_usd": 0.000123,
        "cache_saved_usd": 0.0024,
    }
    _, interrupted = _final(MessageStatus.INTERRUPTED)
    assert interrupted == {
        "message_id": MESSAGE_ID,
        "status": "interrupted",
        "code": "interrupted",
        "message": "the reply did not finish",
        "retryable": True,
    }
    _, refused = _final(MessageStatus.ERROR, error_code="upstream_400", error_message="bad")
    assert refused["retryable"] is False
    assert _final(MessageStatus.ERROR, error_code="upstream_502")[1]["retryable"] is True


def test_the_non_stream_body_is_meta_the_final_event_and_the_content():
    meta = EXAMPLES[Event.META]
    events = [
        LogEvent.make(1, Event.META, meta),
        LogEvent.make(2, Event.REASONING, {"content": "hmm"}),
        LogEvent.make(3, Event.DELTA, {"content": "Hel"}),
        LogEvent.make(4, Event.ANNOTATION, CITATION),
        LogEvent.make(5, Event.DELTA, {"content": "lo"}),
        LogEvent.make(6, Event.DONE, EXAMPLES[Event.DONE]),
    ]
    assert final_body(events) == {**meta, **EXAMPLES[Event.DONE], "content": "Hello"}
    assert succeeded(events)

    failed = [*events[:3], LogEvent.make(4, Event.ERROR, EXAMPLES[Event.ERROR])]
    body = final_body(failed)
    assert (body["status"], body["code"], body["content"]) == ("error", "upstream_503", "Hel")
    assert not succeeded(failed)
