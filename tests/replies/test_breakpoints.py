"""Where a turn marks its prompt-cache breakpoints, which models get them, and what a cache saved:
pure functions, no server (the server and the simulator: tests/http/test_prompt_caching.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.billing.budgets import message_token_bound
from app.core.caching import CachePrices, cache_saved, needs_breakpoints
from app.replies.breakpoints import (
    CACHE_CONTROL,
    MIN_CACHEABLE_TOKENS,
    breakpoint_indexes,
    marked,
    with_breakpoints,
)

LONG = "A system prompt long enough to cache. " * 40  # over MIN_CACHEABLE_TOKENS by the bound
SONNET = CachePrices(
    input=Decimal("0.000003"), read=Decimal("0.0000003"), write=Decimal("0.00000375")
)


def conversation(turns: int, *, system: str = LONG) -> list[dict]:
    """A chat request after `turns - 1` earlier turns: system, the history, the new message."""
    messages = [{"role": "system", "content": system}]
    for turn in range(1, turns):
        messages += [
            {"role": "user", "content": f"question {turn}"},
            {"role": "assistant", "content": f"answer {turn}"},
        ]
    return [*messages, {"role": "user", "content": f"question {turns}"}]


def test_a_chat_marks_the_system_prompt_last_turns_end_and_the_new_message():
    assert breakpoint_indexes(conversation(1), reads=True, writes=True) == [0, 1]
    # Turn 5: [system, q1, a1, …, q4, a4, q5]: q4 (index 7) is what turn 4 ended with.
    assert breakpoint_indexes(conversation(5), reads=True, writes=True) == [0, 7, 9]
    for turns in range(2, 31):
        messages = conversation(turns)
        assert breakpoint_indexes(messages, reads=True, writes=True) == [
            0,
            len(messages) - 3,
            len(messages) - 1,
        ]


def test_this_turns_read_point_is_where_last_turn_wrote():
    """What turn k marks last (its new message) is what turn k+1 marks second: the prefix
    written is the prefix read."""
    for turns in range(1, 30):
        this, following = conversation(turns), conversation(turns + 1)
        written = breakpoint_indexes(this, reads=True, writes=True)[-1]
        read = breakpoint_indexes(following, reads=True, writes=True)[1]
        assert this[: written + 1] == following[: read + 1]


def test_a_coach_call_never_marks_its_one_message():
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "transcript"}]
    assert breakpoint_indexes(messages, reads=False, writes=False) == [0]


def test_a_history_that_will_not_be_sent_again_is_neither_read_nor_written():
    """Reads: last turn's end, marked only when it is there to read; writes: the new message,
    only when the next turn sends it again. A breakpoint is a write too: one nobody reads
    again costs more than none."""
    messages = conversation(5)
    assert breakpoint_indexes(messages, reads=True, writes=False) == [0, 7]
    assert breakpoint_indexes(messages, reads=False, writes=False) == [0]
    assert breakpoint_indexes(messages, reads=False, writes=True) == [0, 9]


def test_no_breakpoint_on_a_prefix_shorter_than_the_minimum():
    short = conversation(3, system="Be brief.")
    assert breakpoint_indexes(short, reads=True, writes=True) == []
    # Once the prefix reaches the minimum (by the budget's bound), the breakpoints from there on.
    history = [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "y" * 300}]
    grown = [{"role": "system", "content": "Be brief."}, *history * 2]
    grown.append({"role": "user", "content": "new"})
    bounds = [message_token_bound(m) for m in grown]
    reach = next(i for i in range(len(grown)) if sum(bounds[: i + 1]) >= MIN_CACHEABLE_TOKENS)
    marked_at = breakpoint_indexes(grown, reads=True, writes=True)
    assert marked_at and min(marked_at) >= reach
    assert marked_at == [i for i in [0, 3, 5] if i >= reach]


def test_never_more_than_four_and_never_twice_the_same_message():
    one = [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}]
    assert breakpoint_indexes(one, reads=True, writes=True) == [0, 1]
    for turns in range(1, 40):
        found = breakpoint_indexes(conversation(turns), reads=True, writes=True)
        assert len(found) <= 4 and len(set(found)) == len(found) and found == sorted(found)


def test_marking_makes_content_parts_and_leaves_the_messages_given_alone():
    messages = conversation(3)
    before = [dict(m) for m in messages]
    out = with_breakpoints(messages, reads=True, writes=True)
    assert messages == before  # nothing mutated
    assert out[0]["content"] == [{"type": "text", "text": LONG, "cache_control": CACHE_CONTROL}]
    assert out[1] is messages[1]  # not marked: the same object
    assert out[3]["content"][0]["cache_control"] == {"type": "ephemeral"}  # no TTL: 5 minutes
    # Parts already there: the last one gets the breakpoint.
    parts = {"role": "user", "content": [{"type": "image_url"}, {"type": "text", "text": "t"}]}
    assert marked(parts)["content"] == [
        {"type": "image_url"},
        {"type": "text", "text": "t", "cache_control": CACHE_CONTROL},
    ]


@pytest.mark.parametrize(
    ("model", "prices", "expected"),
    [
        ("anthropic/claude-sonnet-4", SONNET, True),
        ("anthropic/claude-3.5-sonnet", None, False),  # no cache price in the catalog
        ("openai/gpt-4o", CachePrices(Decimal("0.0000025"), Decimal("0.00000125")), False),
        ("deepseek/deepseek-chat", CachePrices(Decimal("0.0000003"), Decimal("0.00000003")), False),
        (
            "google/gemini-2.5-flash",
            CachePrices(Decimal("0.0000003"), Decimal("0.000000075")),
            False,
        ),
    ],
)
def test_only_models_that_need_breakpoints_get_them(model, prices, expected):
    assert needs_breakpoints(model, prices) is expected


def test_the_saving_is_exact_to_the_pico_dollar():
    # 1,000 tokens read at $0.30/M instead of $3/M: $0.0027 saved; 400 written at $3.75/M
    # instead of $3/M: $0.0003 more.
    assert SONNET.saved(cached_tokens=1000, cache_write_tokens=0) == 2_700_000_000
    assert SONNET.saved(cached_tokens=0, cache_write_tokens=400) == -300_000_000
    assert SONNET.saved(cached_tokens=1000, cache_write_tokens=400) == 2_400_000_000
    assert SONNET.saved(cached_tokens=1, cache_write_tokens=0) == 2_700_000  # 2.7 micro-cents
    # A read price alone: writes cost the input price.
    auto = CachePrices(input=Decimal("0.0000025"), read=Decimal("0.00000125"))
    assert auto.saved(cached_tokens=3, cache_write_tokens=7) == 3_750_000
    assert cache_saved(None, cached_tokens=0, cache_write_tokens=0) == 0
    assert cache_saved(None, cached_tokens=5, cache_write_tokens=0) is None
