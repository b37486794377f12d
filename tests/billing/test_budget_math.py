"""The arithmetic of budgets: the prompt-token bound never undercounts, the worst case rounds
up, and periods roll over at UTC midnight and at the first of the month."""

from __future__ import annotations

import random
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal

from app.billing.budgets import PER_MESSAGE_TOKENS, Periods, prompt_token_bound, worst_case
from app.upstream.models_catalog import Pricing

# Text a tokenizer could meet at its worst: multi-byte scripts, emoji (4 bytes), combining
# marks, controls JSON escapes, and characters NFKC expands (U+FDFA: 18 characters).
ALPHABET = 'aZ09 \n\t"\\/é中文🙂\u0301\u0000\u001f\ufdfa\u2163\u3300ﬃ' + "".join(
    chr(c) for c in range(0x20, 0x7F)
)

# Chat templates: the literal text around each message and the special tokens in it.
TEMPLATES = {
    # ChatML: <|im_start|>{role}\n{content}<|im_end|>\n
    "chatml": (lambda role: f"{role}\n", "\n", 2),
    # Llama 3: <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
    "llama3": (lambda role: f"{role}\n\n", "", 3),
    # Mistral: [INST] {content} [/INST]
    "mistral": (lambda role: " ", " ", 2),
}


def _tokens_at_most(messages: list[dict[str, str]], template: str) -> int:
    """An upper bound of what any BPE tokenizer emits for `messages` rendered in `template`:
    each token of text covers at least one byte of it (of the NFKC form, for a tokenizer that
    normalizes), each special token is one, plus a BOS token and the assistant's header."""
    before, after, specials = TEMPLATES[template]
    total = 1 + specials + len(before("assistant").encode())
    for message in messages:
        text = before(message["role"]) + message["content"] + after
        raw = len(text.encode("utf-8", "surrogatepass"))
        normalized = len(unicodedata.normalize("NFKC", text).encode("utf-8", "surrogatepass"))
        total += max(raw, normalized) + specials
    return total


def _body(messages: list[dict[str, str]]) -> dict[str, object]:
    return {
        "model": "openai/gpt-4o",
        "messages": messages,
        "temperature": 0.7,
        "max_tokens": 1024,
        "user": "u",
    }


def test_the_prompt_bound_is_never_below_what_a_tokenizer_can_emit():
    rng = random.Random(18)
    for _ in range(3000):
        messages = [
            {
                "role": rng.choice(["system", "user", "assistant"]),
                "content": "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 200))),
            }
            for _ in range(rng.randrange(1, 6))
        ]
        bound = prompt_token_bound(_body(messages))
        for template in TEMPLATES:
            assert bound >= _tokens_at_most(messages, template), (template, messages)


def test_nfkc_expansion_is_counted():
    expanding = "\ufdfa" * 100  # 3 bytes each, 33 bytes each once NFKC-normalized
    bound = prompt_token_bound(_body([{"role": "user", "content": expanding}]))
    assert bound >= len(unicodedata.normalize("NFKC", expanding).encode()) + PER_MESSAGE_TOKENS


def test_the_worst_case_is_integer_picodollars_rounded_up():
    pricing = Pricing(
        input=Decimal("2.5"), output=Decimal("10"), request=Decimal("0.001"), image=None
    )
    # 3 tokens at $2.5/M = 7,500,000 pico; 2 at $10/M = 20,000,000; $0.001 = 10^9.
    assert worst_case(prompt_tokens=3, max_tokens=2, pricing=pricing) == 1_027_500_000
    tiny = Pricing(input=Decimal("0.0000001"), output=Decimal(0), request=None, image=None)
    # 1 token at $1e-7/M is 0.1 pico-dollar: rounded up, never down to nothing.
    assert worst_case(prompt_tokens=1, max_tokens=0, pricing=tiny) == 1


def test_periods_roll_over_at_utc_midnight_and_the_first_of_the_month():
    last = Periods.at(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert (last.day, last.month) == ("2026-12-31", "2026-12")
    assert last.day_resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert last.month_resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    first = Periods.at(datetime(2027, 1, 1, tzinfo=UTC))
    assert (first.day, first.month) == ("2027-01-01", "2027-01")
    assert Periods.at(datetime(2028, 2, 29, 12, tzinfo=UTC)).month_resets_at == datetime(
        2028, 3, 1, tzinfo=UTC
    )
