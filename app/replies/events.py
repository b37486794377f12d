"""The events of one assistant reply, as clients see them on the wire.

A reply's events are numbered from 1: `meta`, then, in the order they streamed, one `reasoning`
per upstream reasoning delta, one `delta` per content delta and one `annotation` per citation,
then exactly one final event, `done` or `error`. The same numbering is rebuilt from the database for
a reply that has finished (see `replay`), so `Last-Event-ID` means the same thing live and later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.core.money import from_picos, usd
from app.core.states import MessageStatus

# Which final event each ending of an assistant message ends with.
FINAL_STATUSES = {
    MessageStatus.COMPLETE: "done",
    MessageStatus.STOPPED: "done",
    MessageStatus.ERROR: "error",
    MessageStatus.INTERRUPTED: "error",
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


@dataclass(frozen=True, slots=True)
class LogEvent:
    id: int
    event: str
    data: str  # JSON, encoded once for every subscriber
    frame: bytes  # the SSE frame, encoded once for every subscriber

    @classmethod
    def make(cls, id: int, event: str, payload: dict[str, Any]) -> LogEvent:
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return cls(id, event, data, f"id: {id}\nevent: {event}\ndata: {data}\n\n".encode())

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.data)


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
    cache_saved: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """(event name, payload) of a reply's last event; live runs and replays both use it."""
    if FINAL_STATUSES[status] == "done":
        return "done", {
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
            # What prompt caching saved on this reply (negative: a first write cost more than
            # the reads saved); null when a cache was used and its prices are not known.
            "cache_saved_usd": usd(from_picos(cache_saved)),
        }
    return "error", {
        "message_id": message_id,
        "status": status,
        "code": error_code or status,
        "message": error_message or "the reply did not finish",
        "retryable": is_retryable(error_code or status),
    }


def is_retryable(code: str) -> bool:
    """Whether asking again may work; from the code, so a replay says what the live run said."""
    return code in RETRYABLE_CODES or code.startswith("upstream_5")
