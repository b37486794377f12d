"""Prompt-cache breakpoints: where a turn's request marks `cache_control`, for models that need it.

A model that caches only where told (app/core/caching.py's rule: Anthropic's) caches the prompt's
prefix up to each content part marked `cache_control: {"type": "ephemeral"}` (5-minute TTL, the
default), and a later request whose prefix up to one of its own breakpoints is the same reads it
at a tenth of the input price. A conversation's prefix is stable where it ends at:

1. the system prompt (every turn of the agent starts with it);
2. the last message sent last turn: the user message the history's last reply answered. Last
   turn marked it as (3), so this turn reads everything up to it from the cache: marked when
   the history sent starts where last turn's did (`reads`: the history window moves in steps,
   app/replies/window.py, so most turns share their start with the turn before);
3. the new user message, when the next turn will send this same prefix and read it as (2)
   (`writes`: the next turn's history will start at the same message; not the coach, whose one
   user message holds the transcript it reviews, and is never sent again).

A breakpoint is a write as much as a read: one on a prefix nobody sends again costs 1.25x the
input price on its tokens for nothing. So the turn whose history start moves reads only the
system prompt, and a turn whose history was cut to fit its model's window (that cut moves every
turn) marks only the system prompt (docs/caching.md has what each costs).

So each turn reads the whole history but its last reply, and writes that reply and the new
message (a write costs 1.25x the input price on Anthropic: a one-turn conversation pays a
little more, every later turn much less; docs/caching.md has the figures). At most 3 of the
4 breakpoints a request may carry; none on a prefix shorter than the minimum a provider caches
(MIN_CACHEABLE_TOKENS, counted with the budget's token bound, app/billing/budgets.py), where
it would take a breakpoint and cache nothing.

Computed once per turn on what is sent (after the history is fitted to the model's window):
the prefix is measured message by message until it reaches the minimum, so the work is linear
in the request and usually stops within its first messages; nothing on the relay path.
"""

from __future__ import annotations

from typing import Any

from app.billing.budgets import message_token_bound

CACHE_CONTROL = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4  # Anthropic's limit per request
# The shortest prefix Claude caches (Sonnet and Opus up to 4.1; Haiku's is 2,048, Opus 4.5's
# 4,096: there a breakpoint on a shorter prefix is ignored, never an error).
MIN_CACHEABLE_TOKENS = 1024


def breakpoint_indexes(messages: list[dict[str, Any]], *, reads: bool, writes: bool) -> list[int]:
    """The indexes of the messages to mark, in order (see the module doc)."""
    count = len(messages)
    if count == 0:
        return []
    wanted: list[int] = []
    system = 0
    while system < count - 1 and messages[system].get("role") == "system":
        system += 1
    if system:
        wanted.append(system - 1)
    last = count - 1
    if reads:
        previous = next(
            (i for i in range(last - 1, system - 1, -1) if messages[i].get("role") == "user"),
            None,
        )
        if previous is not None:
            wanted.append(previous)
    if writes:
        wanted.append(last)
    if not wanted:
        return []
    # The first message whose prefix reaches the minimum: every breakpoint before it is dropped.
    reach, used = count, 0
    for index in range(wanted[-1] + 1):
        used += message_token_bound(messages[index])
        if used >= MIN_CACHEABLE_TOKENS:
            reach = index
            break
    return [index for index in dict.fromkeys(wanted) if index >= reach][:MAX_BREAKPOINTS]


def marked(message: dict[str, Any]) -> dict[str, Any]:
    """`message` with a breakpoint on its last content part (a string becomes one text part)."""
    content = message.get("content")
    if isinstance(content, list) and content:
        *before, tail = content
        parts = [*before, {**tail, "cache_control": CACHE_CONTROL}]
    else:
        parts = [{"type": "text", "text": content or "", "cache_control": CACHE_CONTROL}]
    return {**message, "content": parts}


def with_breakpoints(
    messages: list[dict[str, Any]], *, reads: bool, writes: bool
) -> list[dict[str, Any]]:
    """A copy of `messages` with the turn's breakpoints marked (the messages not marked are the
    same objects: nothing is copied that does not change)."""
    indexes = breakpoint_indexes(messages, reads=reads, writes=writes)
    if not indexes:
        return messages
    out = list(messages)
    for index in indexes:
        out[index] = marked(out[index])
    return out
