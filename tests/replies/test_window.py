"""The history window (app/replies/window.py): the oldest turns are left out in steps, so the
history's start stays put across consecutive turns, never above `history_messages`."""

from __future__ import annotations

import pytest

from app.billing.budgets import message_token_bound, prompt_token_bound
from app.replies import fitting
from app.replies.window import cut, step, windowed
from tests.replies.test_fitting import chat_compose, request


def conversation(turns: int) -> list[tuple[int, dict[str, str]]]:
    """`(seq, message)` of a linear conversation of `turns` whole turns."""
    rows = []
    for seq in range(1, 2 * turns + 1):
        role = "user" if seq % 2 else "assistant"
        rows.append((seq, {"role": role, "content": f"{role} {seq}"}))
    return rows


def read(rows, limit):
    """What `Replies.history_with_seqs` reads: the last `limit` messages."""
    return rows[-limit:] if limit else []


def test_the_step_is_half_the_window_in_whole_turns():
    assert [step(n) for n in (2, 3, 4, 6, 10, 20, 80)] == [2, 2, 2, 4, 6, 10, 40]


@pytest.mark.parametrize("limit", [2, 3, 4, 6, 7, 10, 20, 21])
def test_never_more_than_the_cap_and_always_whole_turns(limit):
    for turns in range(0, 60):
        window = windowed(read(conversation(turns), limit), limit=limit)
        assert len(window.messages) <= limit
        assert not window.messages or window.messages[0]["role"] == "user"
        if turns:
            # The newest turn always goes, and what goes is the end of the conversation.
            assert window.messages[-1]["content"] == f"assistant {2 * turns}"
            assert len(window.messages) >= min(2, limit - limit % 2)


def test_the_start_stays_put_for_half_a_window_of_turns_at_the_default():
    starts = []
    for turns in range(0, 30):
        window = windowed(read(conversation(turns), 20), limit=20)
        starts.append(window.messages[0]["content"] if window.messages else None)
    # Whole until turn 11 (10 turns of history), then a move every 5 turns, not every turn.
    assert starts[1:11] == ["user 1"] * 10
    assert starts[11:16] == ["user 11"] * 5
    assert starts[16:21] == ["user 21"] * 5
    assert starts[21:26] == ["user 31"] * 5
    assert len(set(starts[11:])) == 4


@pytest.mark.parametrize("limit", [4, 6, 20, 21])
def test_same_as_last_and_next_say_what_the_turns_beside_send(limit):
    """`same_as_last`/`same_as_next` are true exactly when the turn before/after starts at the
    same message: where a breakpoint is read, and where one is worth writing."""
    windows = [windowed(read(conversation(t), limit), limit=limit) for t in range(0, 40)]
    first = [w.messages[0]["content"] if w.messages else None for w in windows]
    for t in range(1, 39):
        # Turn 1 (an empty history) starts a conversation: the next one reads its prefix.
        assert windows[t].same_as_last == (first[t - 1] in (None, first[t]))
        assert windows[t].same_as_next == (first[t + 1] == first[t] or first[t] is None)
    assert windows[0].same_as_next


def test_cut_is_a_multiple_of_the_step_at_least_the_cap_back():
    for limit in (3, 6, 20):
        for last in range(0, 100):
            start = cut(last, limit)
            assert start % step(limit) == 0 and last - limit <= start < max(
                1, last - limit + step(limit)
            )


def test_a_gap_in_seq_leaves_fewer_messages_never_more():
    """A reply that failed empty keeps its `seq` but is never read: the window holds less."""
    rows = [r for r in conversation(14) if r[0] != 20]
    window = windowed(rows[-20:], limit=20)
    assert len(window.messages) <= 20 and window.messages[0]["role"] == "user"


def test_the_model_window_still_wins_and_the_note_counts_what_the_window_held():
    """Fitted after the step: a model window that holds two turns sends two, and `meta`'s
    note counts the window's messages it left out."""
    history = windowed(read(conversation(14), 20), limit=20).messages
    assert len(history) == 18
    last_two = sum(message_token_bound(m) for m in history[-4:])
    base = request()
    room = last_two + fitting.reply_allowance(base.max_tokens, None)
    fitted, note = fitting.fit(
        base,
        history,
        window=room + prompt_token_bound(base.upstream_body()),
        compose=chat_compose("new question"),
    )
    assert fitted.messages[1:-1] == history[-4:]
    assert note == fitting.HistoryNote(sent=4, left_out=14)
