"""Fitting history to a model's window (app/replies/fitting.py): whole recent turns, by a bound
that never counts fewer tokens than the budget's, measured only over what is sent."""

from __future__ import annotations

import random
from functools import partial

import pytest

from app.billing.budgets import message_token_bound, prompt_token_bound
from app.core.run_request import RunRequest
from app.errors import ApiError
from app.http.turns import _coach_message
from app.replies import fitting
from app.replies.fitting import HistoryNote, fit, kept_from, reply_allowance

SYSTEM = {"role": "system", "content": "Be brief."}


def request(content: str = "new question", *, max_tokens: int = 256, **extra) -> RunRequest:
    return RunRequest(
        message_id="m",
        conversation_id="c",
        user_message_id="u",
        user_id="someone",
        agent="chat",
        model="gryphe/mythomax-l2-13b",
        fallback_models=(),
        temperature=0.7,
        max_tokens=max_tokens,
        messages=[SYSTEM, {"role": "user", "content": content}],
        **extra,
    )


def chat_compose(content: str):
    return lambda kept: [SYSTEM, *kept, {"role": "user", "content": content}]


def turns(count: int, text=lambda i, role: f"{role} {i} " * 20) -> list[dict]:
    history = []
    for i in range(count):
        history.append({"role": "user", "content": text(i, "user")})
        history.append({"role": "assistant", "content": text(i, "assistant")})
    return history


def sent_bound(fitted: RunRequest) -> int:
    return prompt_token_bound(fitted.upstream_body()) + reply_allowance(
        fitted.max_tokens, fitted.reasoning
    )


def test_everything_goes_when_it_fits_and_no_note_is_made():
    history = turns(3)
    fitted, note = fit(request(), history, window=100_000, compose=chat_compose("new question"))
    assert fitted.messages == [SYSTEM, *history, {"role": "user", "content": "new question"}]
    assert note is None


def test_an_unknown_window_sends_everything():
    history = turns(50)
    fitted, note = fit(request(), history, window=None, compose=chat_compose("q"))
    assert fitted.messages[1:-1] == history and note is None


@pytest.mark.parametrize("window", [1500, 2000, 2600, 4096, 9000])
def test_the_longest_run_of_whole_recent_turns_that_fits_is_sent(window):
    history = turns(30)
    fitted, note = fit(request(), history, window=window, compose=chat_compose("new question"))
    kept = fitted.messages[1:-1]
    assert sent_bound(fitted) <= window
    assert kept == history[len(history) - len(kept) :]  # the most recent ones
    assert kept == [] or kept[0]["role"] == "user"  # whole turns
    assert note == HistoryNote(sent=len(kept), left_out=len(history) - len(kept))
    # One more turn would not have fitted.
    longer = history[len(history) - len(kept) - 2 :]
    assert sent_bound(fitting.replace(fitted, messages=chat_compose("new question")(longer))) > (
        window
    )


def test_a_history_cut_mid_turn_by_history_messages_still_goes_whole_when_it_fits():
    history = turns(3)[1:]  # starts with a reply
    fitted, note = fit(request(), history, window=100_000, compose=chat_compose("q"))
    assert fitted.messages[1:-1] == history and note is None


def test_a_reply_is_never_sent_without_its_question():
    history = turns(4)
    room = sum(message_token_bound(m) for m in history[-3:])  # a reply, a question, a reply
    start = kept_from(history, room)
    assert start == len(history) - 2


def test_a_message_that_cannot_fit_alone_is_refused_with_the_window():
    with pytest.raises(ApiError) as refused:
        fit(request("x" * 5000), turns(2), window=4096, compose=chat_compose("x" * 5000))
    assert refused.value.status == 422 and refused.value.code == "message_too_long_for_model"
    assert refused.value.details["context_length"] == 4096
    assert "4096" in refused.value.message


def test_a_reasoning_budget_in_tokens_is_kept_out_of_the_window_too():
    plain, _ = fit(request(), turns(30), window=4096, compose=chat_compose("new question"))
    thinking = request(reasoning={"max_tokens": 1000})
    fitted, _ = fit(thinking, turns(30), window=4096, compose=chat_compose("new question"))
    assert len(fitted.messages) < len(plain.messages)
    assert sent_bound(fitted) <= 4096


def test_only_what_is_sent_is_measured(monkeypatch):
    measured = []

    def counting(message):
        measured.append(message)
        return message_token_bound(message)

    history = turns(1000)  # a conversation far longer than what fits
    monkeypatch.setattr(fitting, "message_token_bound", counting)
    start = kept_from(history, 3000, bound=counting)
    assert len(measured) == len(history) - start + 1  # what is sent, and the one that did not fit


UNICODE = [
    "plain words",
    "e\u0301t\u00e9",  # combining marks
    "\ufdfa",  # NFKC's largest expansion (18 characters)
    "\u2460\u2461 \uff21\uff22",  # circled digits, full-width letters
    "emoji \U0001f600 and CJK \u4e2d\u6587",
    'quotes " and \\ backslashes \n newlines',
    "<\u0338 =\u0338",  # ASCII that composes with what follows
]


@pytest.mark.parametrize("seed", range(20))
def test_the_bound_of_what_is_sent_never_exceeds_the_window(seed):
    rng = random.Random(seed)

    def text(i, role):
        return " ".join(rng.choice(UNICODE) for _ in range(rng.randint(0, 60)))

    history = turns(rng.randint(0, 40), text)
    window = rng.randint(1500, 8000)
    asked = text(0, "user")
    try:
        fitted, _ = fit(request(asked), history, window=window, compose=chat_compose(asked))
    except ApiError:
        assert sent_bound(request(asked)) > window
        return
    assert sent_bound(fitted) <= window


def test_the_sum_of_message_bounds_covers_a_whole_body():
    rng = random.Random(7)
    for _ in range(200):
        messages = [
            {"role": rng.choice(["user", "assistant"]), "content": rng.choice(UNICODE) * 3}
            for _ in range(rng.randint(0, 8))
        ]
        base = request()
        whole = fitting.replace(base, messages=[SYSTEM, *messages, base.messages[-1]])
        assert prompt_token_bound(whole.upstream_body()) <= prompt_token_bound(
            base.upstream_body()
        ) + sum(message_token_bound(m) for m in messages)


@pytest.mark.parametrize("seed", range(10))
def test_the_coach_s_transcript_is_fitted_inside_its_message(seed):
    rng = random.Random(seed)

    def text(i, role):
        return " ".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 80)))

    transcript = turns(30, text)
    render = partial(_coach_message, context="my draft", question="is it kind?")

    def compose(kept):
        return [SYSTEM, {"role": "user", "content": render(kept)}]

    base = fitting.replace(request(), messages=compose([]))
    fitted, note = fit(base, transcript, window=4096, compose=compose)
    assert sent_bound(fitted) <= 4096
    assert note is not None and note.left_out > 0
    kept = transcript[note.left_out :]
    assert fitted.messages[-1]["content"] == render(kept)
    assert "Question:\nis it kind?" in fitted.messages[-1]["content"]
