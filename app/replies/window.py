"""The history window: which recent turns a chat turn sends, left out in steps.

A turn sends at most `history_messages` (N) messages of history. Leaving the oldest turn out at
every turn once a conversation outgrows N would change the prefix sent past the system prompt
at every turn, and no prompt cache (Anthropic's breakpoints, or a provider caching by itself)
would ever read it again (docs/caching.md: 0.88x the cost without caching at N = 20). So the
oldest turns are left out in steps of half the window (in whole turns): the history starts at
a boundary that only moves every N/2 messages (every 5 turns at N = 20), and the turns between
two moves send the same prefix, each reading what the one before wrote.

Positions are the messages' `seq` (a conversation's messages in the order written, increasing
along every branch): a turn whose history ends at `seq` = s sends the messages of its branch
after `cut(s, N)`, a multiple of the step at least s - N, so never more than N, and from its
first user message on (whole turns). Then the model's window is fitted (app/replies/fitting.py),
which may leave out more: the window always wins. Pure: nothing here touches a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def step(limit: int) -> int:
    """How many messages the history's start moves at once: half the window, rounded up to
    whole turns (two messages each: an odd step would start every other cut mid-turn)."""
    return 2 * -(-limit // 4)


def cut(last_seq: int, limit: int) -> int:
    """The `seq` after which a history ending at `last_seq` starts (0: the conversation's
    first message): the smallest multiple of the step at least `last_seq - limit`."""
    size = step(limit)
    return max(0, -(-(last_seq - limit) // size) * size)


@dataclass(frozen=True, slots=True)
class Window:
    """The history a turn sends, and whether its start is shared with the turns beside it."""

    messages: list[dict[str, Any]]
    # Last turn's history started at the same message: what it sent is this one's prefix.
    same_as_last: bool
    # The next turn's (after this turn's reply) will start at the same message.
    same_as_next: bool


def windowed(rows: Sequence[tuple[int, dict[str, Any]]], *, limit: int) -> Window:
    """The window of `rows` (`(seq, message)`, oldest first, the last `limit` messages of the
    branch, as `Replies.history_with_seqs` reads them)."""
    if not rows:
        return Window(messages=[], same_as_last=True, same_as_next=cut(2, limit) == 0)
    last_seq = rows[-1][0]
    start = cut(last_seq, limit)
    first = next(
        (i for i, (seq, m) in enumerate(rows) if seq > start and m["role"] == "user"), len(rows)
    )
    # Last turn's history ended at the message before the last user message (when not read:
    # the one written just before it).
    asked = next((i for i in range(len(rows) - 1, -1, -1) if rows[i][1]["role"] == "user"), None)
    before = last_seq if asked is None else rows[asked - 1][0] if asked else rows[0][0] - 1
    return Window(
        messages=[m for _, m in rows[first:]],
        same_as_last=cut(before, limit) == start,
        # This turn's user message and reply come next: the next turn's history ends 2 later.
        same_as_next=cut(last_seq + 2, limit) == start,
    )
