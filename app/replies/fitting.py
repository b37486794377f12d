"""Fitting a turn to its model's context window: the longest run of whole recent turns that fits.

What goes upstream must fit the window of the model it goes to (and of each fallback): OpenRouter
answers a request over it with a 400, and a conversation that grew past it would fail on every
later turn. So before each request the history is cut, oldest turns first, until

    prompt_token_bound(request) + max_tokens (+ the reasoning budget, when one is set) <= window

with the budget's prompt bound (app/billing/budgets.py), which never counts fewer tokens than a
tokenizer would. The request without history (the system prompt, the new message, every other
field) is measured once; then each history message from the newest back, by what it adds to that
bound (`message_token_bound`), until one does not fit: the work is linear in what is sent, never
in the conversation's length (what is read is bounded by `history_messages` and, in characters,
by the window: `Replies.history(max_chars=…)`).

Whole turns only: the history kept starts at a user message, so a reply is never sent without
the question it answered. A new message that does not fit even with no history is refused before
anything is written (422 message_too_long_for_model). Nothing here touches a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from app.billing.budgets import message_token_bound, prompt_token_bound
from app.core.run_request import RunRequest
from app.errors import ApiError

# The shape of what is sent: the request's messages given the history kept (oldest first).
Compose = Callable[[Sequence[dict[str, Any]]], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class HistoryNote:
    """How much of the history read was sent; `meta` carries it when some was left out."""

    sent: int
    left_out: int

    def to_json(self) -> dict[str, int]:
        return {"sent": self.sent, "left_out": self.left_out}


def reply_allowance(max_tokens: int, reasoning: dict[str, Any] | None) -> int:
    """The window's tokens a request keeps for its answer: `max_tokens`, and the reasoning
    budget too when one is set in tokens (counted apart, as some providers do)."""
    budget = (reasoning or {}).get("max_tokens")
    return max_tokens + (budget if isinstance(budget, int) else 0)


def kept_from(
    history: Sequence[dict[str, Any]],
    room: int,
    *,
    bound: Callable[[dict[str, Any]], int] = message_token_bound,
) -> int:
    """The index where the longest run of whole recent turns of `history` that fits in `room`
    tokens starts (`len(history)`: none fits; 0: all of it fits, whatever it starts with).
    Walks from the newest message back and stops at the first that does not fit."""
    start = len(history)
    used = 0
    for index in range(len(history) - 1, -1, -1):
        used += bound(history[index])
        if used > room:
            return start
        if history[index]["role"] == "user":
            start = index  # a turn begins here: everything after it fits too
    return 0


def fit(
    request: RunRequest,
    history: Sequence[dict[str, Any]],
    *,
    window: int | None,
    compose: Compose,
) -> tuple[RunRequest, HistoryNote | None]:
    """`request` with the messages `compose` makes of the most recent whole turns of `history`
    that fit `window` tokens (None: the window is unknown, all of it goes), and a note when
    some were left out. `request.messages` is the request without history; refused with 422
    message_too_long_for_model when that alone does not fit."""
    if window is None:
        return replace(request, messages=compose(history)), None
    allowance = reply_allowance(request.max_tokens, request.reasoning)
    room = window - allowance - prompt_token_bound(request.upstream_body())
    if room < 0:
        raise ApiError(
            422,
            "message_too_long_for_model",
            f"this message is too long for {request.model}, whose context window is {window} "
            f"tokens with {request.max_tokens} kept for the reply: shorten it, or choose a "
            "model with a larger context window",
            details={"model": request.model, "context_length": window},
        )
    start = kept_from(history, room)
    fitted = replace(request, messages=compose(history[start:]))
    if start == 0:
        return fitted, None
    return fitted, HistoryNote(sent=len(history) - start, left_out=start)
