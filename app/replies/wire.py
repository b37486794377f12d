"""The wire format of a reply's events: the one place to change an event.

A reply's events are numbered from 1: `meta`, then, in the order they streamed, one `reasoning`
per upstream reasoning delta, one `delta` per content delta and one `annotation` per citation,
then exactly one final event, `done` or `error`. The same numbering is rebuilt from the database
for a reply that has finished (`stored_events`), so `Last-Event-ID` means the same thing live
and later. Everything that spells an event or a frame is here:

    Event                 the event names
    LogEvent              one numbered event: its name, its JSON data and its SSE frame, each
                          encoded once for every follower (`LogEvent.make`)
    meta_payload,         the first and the last event's data; `final_event` for live runs and
    final_event           replays alike
    frames, PING,         the SSE bytes of a batch of events (with the one-step GET forms' ids
    RETRY_FIELD           `<message_id>:<n>`: `reply_id_prefix`, `REPLY_EVENT_ID`), a keep-alive
    FrameDecoder,         SSE text back into events, fed in any chunks (CR, LF or CRLF line ends)
    decode_frame
    entry_id, to_entry,   a Redis Stream entry of the mirror (`redis_log`): entry id `0-<event id>`,
    from_entry            one field holding the frame the owner encoded
    event_lengths,        what a reply's row records of its events' order (`messages.event_lengths`:
    stored_events         > 0 a delta's length, < 0 a reasoning's, 0 an annotation), and the events
                          rebuilt from it (`replay`)
    final_body            a `"stream": false` answer, built from the events

The browser's side of the same format is app/static (app.js, coach.js); docs/api.md's event
table says what each event's data holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from app.core.money import from_picos, usd
from app.core.states import MessageStatus


class Event(StrEnum):
    # The turn is saved: its ids, the agent, the model asked for, and what history was left
    # out to fit that model's window, if any.
    META = "meta"
    REASONING = "reasoning"  # `{"content"}`: the model's thinking, one per upstream delta
    DELTA = "delta"  # `{"content"}`: the answer, one per upstream content delta
    ANNOTATION = "annotation"  # a citation (`url_citation`): `Citation.to_json`
    DONE = "done"  # final: complete or stopped, with usage and cost
    ERROR = "error"  # final: error or interrupted, with a code and whether to retry


FINAL_EVENTS = frozenset({Event.DONE, Event.ERROR})
# Which final event each ending of an assistant message ends with.
FINAL_STATUSES = {
    MessageStatus.COMPLETE: Event.DONE,
    MessageStatus.STOPPED: Event.DONE,
    MessageStatus.ERROR: Event.ERROR,
    MessageStatus.INTERRUPTED: Event.ERROR,
}
RETRYABLE_CODES = frozenset(
    {
        "interrupted",
        "upstream_timeout",
        "upstream_connection_error",
        "upstream_402",  # only the in-flight budget: out of credits is `insufficient_credits`
        "upstream_408",
        "upstream_429",
    }
)

# Every frame is `id: N\nevent: NAME\ndata: JSON\n\n`. The middle, per event name, made once: a
# StrEnum formatted into an f-string costs a Python call per token on 3.11.
ID_FIELD = b"id: "
_HEADS = {event: f"\nevent: {event.value}\ndata: " for event in Event}
_HEADS_BYTES = {event: head.encode() for event, head in _HEADS.items()}
_CONTENT_FRAME = b'id: %d%b{"content":%b}\n\n'
_BY_NAME = {event.value: event for event in Event}
# A browser's EventSource waits ~3 s by default before reconnecting; a dropped reply should
# resume sooner. It keeps the `retry:` it was given across reconnections: sent before event 1.
RETRY_FIELD = b"retry: 1000\n"
# Proxies (Heroku's router: 55 s) close a connection that stays silent; browsers ignore comments.
PING = b": ping\n\n"
# The one-step GET forms' event ids: `<message_id>:<n>`.
REPLY_EVENT_ID = re.compile(r"([0-9a-f]{32}):([0-9]{1,18})")
# The mirror's stream entry: one field, the event's SSE frame as the owner encoded it.
FIELD = b"f"


@dataclass(slots=True)
class LogEvent:
    """One numbered event, encoded once for every follower: its SSE frame (`id: N`, `event:
    NAME`, `data: JSON`, a blank line). Treat it as immutable: every follower shares it.

    Its JSON is not kept beside the frame (`data` reads it back out): per token that is one
    string less to make and, in a long reply's log, half the memory."""

    id: int
    event: Event
    frame: bytes  # the SSE frame, encoded once for every subscriber

    @classmethod
    def make(cls, id: int, event: Event, payload: dict[str, Any]) -> LogEvent:
        return cls.of(id, event, json.dumps(payload, separators=(",", ":"), ensure_ascii=False))

    @classmethod
    def content(cls, id: int, event: Event, text: str) -> LogEvent:
        """A `delta` or `reasoning` event (`{"content": text}`): the event of every token, its
        JSON by orjson, byte for byte what `make` writes (a string has one JSON spelling
        without `ensure_ascii`; tests/replies/test_wire.py checks it) at a tenth of the
        stdlib's cost (`python -m bench.pertoken`, docs/benchmarks.md "Per token")."""
        return cls(id, event, _CONTENT_FRAME % (id, _HEADS_BYTES[event], orjson.dumps(text)))

    @classmethod
    def of(cls, id: int, event: Event, data: str) -> LogEvent:
        """The event of JSON text already encoded (a decoded frame's)."""
        return cls(id, event, f"id: {id}{_HEADS[event]}{data}\n\n".encode())

    @property
    def data(self) -> str:
        """The event's JSON: its frame's one `data:` line (JSON text has no line break)."""
        frame = self.frame
        return frame[frame.index(b"\ndata: ") + 7 : -2].decode()

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.data)


# -- the first and the last event's data --------------------------------------------------------


def meta_payload(
    *,
    conversation_id: str,
    message_id: str,
    user_message_id: str,
    agent: str,
    model: str,
    history: dict[str, int] | None = None,
) -> dict[str, Any]:
    """`history` ({"sent", "left_out"}): earlier messages were left out to fit the model's
    context window (app/replies/fitting.py)."""
    payload = {
        "conversation_id": conversation_id,
        "message_id": message_id,
        "user_message_id": user_message_id,
        "agent": agent,
        "model": model,
    }
    if history is not None:
        payload["history"] = history
    return payload


def final_event(
    *,
    status: MessageStatus,
    message_id: str,
    finish_reason: str | None,
    model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int,
    cost: Decimal | None,
    error_code: str | None,
    error_message: str | None,
    cache_saved: int | None,
) -> tuple[Event, dict[str, Any]]:
    """(event name, payload) of a reply's last event; live runs and replays both use it."""
    if FINAL_STATUSES[status] == Event.DONE:
        return Event.DONE, {
            "message_id": message_id,
            "status": status,
            "finish_reason": finish_reason,
            "model": model,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "reasoning_tokens": reasoning_tokens,  # counted in completion_tokens too
            },
            "cost_usd": usd(cost),
            # What prompt caching saved on this reply (negative: a first write cost more
            # than the reads saved); null when a cache was used at prices not known
            # (docs/caching.md).
            "cache_saved_usd": usd(from_picos(cache_saved)),
        }
    return Event.ERROR, {
        "message_id": message_id,
        "status": status,
        "code": error_code or status,
        "message": error_message or "the reply did not finish",
        "retryable": is_retryable(error_code or status),
    }


def is_retryable(code: str) -> bool:
    """Whether asking again may work; from the code, so a replay says what the live run said."""
    return code in RETRYABLE_CODES or code.startswith("upstream_5")


# -- SSE: encoding ------------------------------------------------------------------------------


def reply_id_prefix(message_id: str) -> bytes:
    """The id field of the one-step GET forms, whose reconnecting EventSource must name its
    reply: `id: <message_id>:` then the event's number."""
    return ID_FIELD + f"{message_id}:".encode()


def frames(batch: list[LogEvent], id_prefix: bytes | None = None) -> bytes:
    """The SSE bytes of a batch of events; `id_prefix` (`reply_id_prefix`) rewrites each id."""
    if id_prefix is None:
        # A batch is mostly one event (a follower that keeps up): its frame as it is.
        return batch[0].frame if len(batch) == 1 else b"".join([e.frame for e in batch])
    # The shared frame with its id field rewritten for this follower: one slice and one join
    # per event, no encoding.
    cut = len(ID_FIELD)
    return b"".join([id_prefix + event.frame[cut:] for event in batch])


# -- SSE: decoding ------------------------------------------------------------------------------


class FrameDecoder:
    """SSE text back into events, fed in chunks cut anywhere (as a socket or a proxy may cut
    them), with any of the spec's line ends (CR, LF, CRLF). Comments (`PING`) and `retry:` are
    skipped; an event whose id is not a number or whose name is not an `Event` raises
    ValueError. What `frames` writes, this reads back to the same events."""

    __slots__ = ("_data", "_id", "_name", "_tail")

    def __init__(self) -> None:
        self._tail = b""  # an unfinished line, or one ending in CR: maybe half of a CRLF
        self._id: bytes | None = None  # kept from event to event, as the spec's last event id
        self._name: bytes | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[LogEvent]:
        lines = (self._tail + chunk).splitlines(keepends=True)
        self._tail = b""
        if lines and not lines[-1].endswith(b"\n"):
            self._tail = lines.pop()
        return list(self._events(lines))

    def close(self) -> list[LogEvent]:
        """The end of the text: a last line ending in CR is whole; an event with no blank
        line after it is not dispatched (as the spec says)."""
        tail, self._tail = self._tail, b""
        return list(self._events([tail] if tail.endswith(b"\r") else []))

    def _events(self, lines: Iterable[bytes]) -> Iterator[LogEvent]:
        for line in lines:
            line = line.rstrip(b"\r\n")
            if not line:
                if self._data:
                    yield self._dispatch()
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._name = value
            elif field == b"id" and b"\0" not in value:
                self._id = value
            # a comment (no field name) or `retry`: nothing for the events

    def _dispatch(self) -> LogEvent:
        data, self._data = b"\n".join(self._data).decode(), []
        name, self._name = (self._name or b"message").decode(), None
        if name not in _BY_NAME:
            raise ValueError(f"not a reply's event: {name!r}")
        if self._id is None or not self._id.isdigit():
            raise ValueError(f"not a reply's event id: {self._id!r}")
        return LogEvent.of(int(self._id), _BY_NAME[name], data)


def decode_frame(frame: bytes) -> LogEvent:
    """The one event of a whole frame; ValueError if it holds none or more.

    A frame as `LogEvent.make` writes it (every entry of the mirror, decoded per token by each
    following process) is read in one split and keeps its bytes: a quarter of the decoder's
    cost. Anything else goes through the decoder."""
    lines = frame.split(b"\n", 3)
    if (
        len(lines) == 4
        and lines[3] == b"\n"
        and lines[0].startswith(b"id: ")
        and lines[1].startswith(b"event: ")
        and lines[2].startswith(b"data: ")
        and lines[0][4:].isdigit()
        and b"\r" not in frame
        and (name := _BY_NAME.get(lines[1][7:].decode())) is not None
    ):
        lines[2].decode()  # UTF-8, or the ValueError of any entry that is not an event
        return LogEvent(int(lines[0][4:]), name, frame)
    decoder = FrameDecoder()
    events = decoder.feed(frame) + decoder.close()
    if len(events) != 1:
        raise ValueError(f"a frame holds one event, not {len(events)}")
    return events[0]


# -- the Redis mirror's entries -----------------------------------------------------------------


def entry_id(event_id: int) -> str:
    """A stream entry's id: the event's own (`0-<id>`), so a follower resumes where it is."""
    return f"0-{event_id}"


def to_entry(event: LogEvent) -> dict[bytes, bytes]:
    """A stream entry's fields (its id is `entry_id(event.id)`)."""
    return {FIELD: event.frame}


def from_entry(entry: bytes, fields: dict[bytes, bytes]) -> LogEvent:
    """The event of a stream entry; ValueError if the entry is not one (`to_entry`'s)."""
    frame = fields.get(FIELD)
    event = None if frame is None else decode_frame(frame)
    if event is None or entry != b"0-%d" % event.id:  # `entry_id`, as Redis answers it
        raise ValueError(f"stream entry {entry!r} is not its event's")
    return event


# -- the database's record of the order -----------------------------------------------------------


def event_lengths(events: Iterable[LogEvent], parts: list[str], thoughts: list[str]) -> list[int]:
    """What `messages.event_lengths` records: the events in the order streamed, read off the log
    (`parts`: each delta's content, `thoughts`: each reasoning's), so streaming a token costs no
    more than its two appends."""
    each_part, each_thought = iter(parts), iter(thoughts)
    lengths = []
    for event in events:
        if event.event == Event.DELTA:
            lengths.append(len(next(each_part)))
        elif event.event == Event.REASONING:
            lengths.append(-len(next(each_thought)))
        elif event.event == Event.ANNOTATION:
            lengths.append(0)
    return lengths


def stored_events(
    meta: dict[str, Any],
    *,
    content: str,
    reasoning: str,
    annotations: list[dict[str, Any]],
    lengths: list[int],
) -> list[LogEvent]:
    """A stored reply's events up to its final one, with the ids the live run gave them: `meta`
    (1), then one event per recorded length (`event_lengths`)."""
    events = [LogEvent.make(1, Event.META, meta)]
    citations = iter(annotations)
    at = thought_at = 0
    for length in lengths:
        number = len(events) + 1
        if length > 0:
            events.append(LogEvent.content(number, Event.DELTA, content[at : at + length]))
            at += length
        elif length < 0:
            thought = reasoning[thought_at : thought_at - length]
            events.append(LogEvent.content(number, Event.REASONING, thought))
            thought_at -= length
        else:
            events.append(LogEvent.make(number, Event.ANNOTATION, next(citations)))
    return events


# -- a `"stream": false` answer -----------------------------------------------------------------


def final_body(events: list[LogEvent]) -> dict[str, Any]:
    """A whole reply as one JSON body: the `meta` and final event's fields, and the content (an
    error's `status` and `code` among them)."""
    content = "".join(event.payload["content"] for event in events if event.event == Event.DELTA)
    return {**events[0].payload, **events[-1].payload, "content": content}


def succeeded(events: list[LogEvent]) -> bool:
    """Whether a whole reply ended with `done` (else `error`)."""
    return events[-1].event == Event.DONE
