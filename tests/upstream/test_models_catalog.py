"""Parsing OpenRouter's model entries and choosing among them: pure functions, no server."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.core.money import parse_amount
from app.dev.simulator_models import simulated_models
from app.settings import DEFAULT_RECOMMENDED_MODELS
from app.upstream.models_catalog import CAPABILITIES, parse_model, select_models

RECOMMENDED = frozenset(DEFAULT_RECOMMENDED_MODELS)


def parsed() -> dict[str, object]:
    models = [parse_model(raw, recommended=RECOMMENDED) for raw in simulated_models()["data"]]
    return {model.id: model for model in models if model is not None}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.000003", Decimal("0.000003")),
        ("0", Decimal(0)),
        (0.0000025, Decimal("0.0000025")),
        (1, Decimal(1)),
        ("-1", None),  # openrouter/auto: priced per call, unknown up front
        ("abc", None),
        ("NaN", None),
        ("Infinity", None),
        ("", None),
        (None, None),
        (True, None),
        ({"usd": 1}, None),
    ],
)
def test_prices_parse_or_are_unknown_never_an_error(raw, expected):
    assert parse_amount(raw) == expected


def test_realistic_entries_parse_to_exact_per_million_prices_and_capabilities():
    models = parsed()
    claude = models["anthropic/claude-3.5-sonnet"]
    assert (claude.pricing.input, claude.pricing.output) == (Decimal(3), Decimal(15))
    assert claude.pricing.image == Decimal("0.0048") and claude.pricing.request == 0
    assert claude.to_json()["pricing"] == {
        "input_per_million": 3.0,
        "output_per_million": 15.0,
        "known": True,
        "per_image": 0.0048,
    }
    assert (claude.context_length, claude.max_completion_tokens) == (200000, 8192)
    assert claude.recommended
    # Decimal all the way: 0.00000015 * 1e6 is exactly 0.15, not 0.15000000000000002.
    assert models["openai/gpt-4o-mini"].pricing.input == Decimal("0.15")
    assert models["perplexity/sonar"].to_json()["pricing"]["per_request"] == 0.005

    gpt4o = models["openai/gpt-4o"].to_json()["capabilities"]
    assert gpt4o == {
        "tools": True,
        "reasoning": False,
        "structured_outputs": True,
        "image_input": True,
        "file_input": True,
        "audio_input": False,
        "video_input": False,
    }
    assert set(gpt4o) == set(CAPABILITIES)
    assert models["deepseek/deepseek-r1"].capabilities == {"reasoning", "tools"}
    gemini = models["google/gemini-2.0-flash-001"].capabilities
    assert {"audio_input", "video_input", "file_input"} <= gemini


def test_cache_prices_parse_per_million_and_per_token():
    models = parsed()
    sonnet = models["anthropic/claude-sonnet-4"].pricing
    assert (sonnet.cache_read, sonnet.cache_write) == (Decimal("0.3"), Decimal("3.75"))
    assert sonnet.to_json()["cache_read_per_million"] == 0.3
    assert sonnet.to_json()["cache_write_per_million"] == 3.75
    prices = sonnet.cache_prices()
    assert prices is not None
    assert (prices.input, prices.read, prices.write) == (
        Decimal("0.000003"),
        Decimal("0.0000003"),
        Decimal("0.00000375"),
    )
    # A read price without a write price (a model that caches by itself): writes cost the input.
    gpt4o = models["openai/gpt-4o"].pricing.cache_prices()
    assert gpt4o is not None and gpt4o.write is None
    # No cache price: no cache prices, and nothing about them in the JSON.
    older = models["anthropic/claude-3.5-sonnet"]
    assert older.pricing.cache_prices() is None
    assert "cache_read_per_million" not in older.to_json()["pricing"]


def test_odd_entries_show_unknown_prices_and_missing_fields_as_null():
    models = parsed()
    assert len(models) == 15  # the entry without an id is skipped
    auto = models["openrouter/auto"].to_json()["pricing"]
    assert auto == {"input_per_million": None, "output_per_million": None, "known": False}
    rocinante = models["thedrummer/rocinante-12b"].pricing
    assert (rocinante.input, rocinante.output, rocinante.known) == (Decimal("0.25"), None, False)
    assert not models["cognitivecomputations/dolphin-mixtral-8x22b"].pricing.known
    hermes = models["nousresearch/hermes-3-llama-3.1-405b"]
    assert (hermes.context_length, hermes.max_completion_tokens) == (131072, None)
    assert hermes.output_limit == 131072
    free = models["meta-llama/llama-3.2-3b-instruct:free"].pricing
    assert free.known and free.output == 0


@pytest.mark.parametrize(
    "raw",
    [None, "openai/gpt-4o", {}, {"id": ""}, {"id": 7}, {"name": "no id"}],
)
def test_entries_without_an_id_are_skipped(raw):
    assert parse_model(raw) is None


def test_a_bare_entry_parses_with_everything_unknown():
    model = parse_model({"id": "x/y", "pricing": None, "top_provider": None, "architecture": []})
    assert model.to_json() == {
        "id": "x/y",
        "name": "x/y",
        "context_length": None,
        "max_completion_tokens": None,
        "pricing": {"input_per_million": None, "output_per_million": None, "known": False},
        "capabilities": dict.fromkeys(CAPABILITIES, False),
        "recommended": False,
    }


def ids(models) -> list[str]:
    return [model.id for model in models]


def select(**kwargs):
    return ids(select_models(parsed().values(), recommended=DEFAULT_RECOMMENDED_MODELS, **kwargs))


def test_recommended_models_come_first_in_their_configured_order():
    order = select()
    assert order[:4] == list(DEFAULT_RECOMMENDED_MODELS)
    rest = [parsed()[model_id].name.casefold() for model_id in order[4:]]
    assert rest == sorted(rest)


def test_search_capability_and_price_filters():
    assert select(q="LLAMA 70b") == ["meta-llama/llama-3.1-70b-instruct"]
    assert set(select(q="gpt")) == {"openai/gpt-4o", "openai/gpt-4o-mini"}
    # Matches the name, too; the recommended one first.
    assert select(q="Claude") == ["anthropic/claude-3.5-sonnet", "anthropic/claude-sonnet-4"]
    assert select(capabilities=["tools", "reasoning"]) == ["deepseek/deepseek-r1"]
    assert set(select(capabilities=["structured_outputs"])) == {
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "google/gemini-2.0-flash-001",
    }
    cheap = select(max_price=Decimal("0.5"))
    # Unknown output prices are never "under" a limit.
    assert set(cheap) == {
        "meta-llama/llama-3.1-70b-instruct",
        "mistralai/mixtral-8x7b-instruct",
        "google/gemini-2.0-flash-001",
        "meta-llama/llama-3.2-3b-instruct:free",
        "gryphe/mythomax-l2-13b",
    }


def test_sorting_by_price_context_and_name_keeps_recommended_first():
    by_price = select(sort="price")
    assert by_price[:4] == [
        "mistralai/mixtral-8x7b-instruct",
        "meta-llama/llama-3.1-70b-instruct",
        "openai/gpt-4o",
        "anthropic/claude-3.5-sonnet",
    ]
    assert by_price[4] == "meta-llama/llama-3.2-3b-instruct:free"
    unknown = {
        "openrouter/auto",
        "thedrummer/rocinante-12b",
        "cognitivecomputations/dolphin-mixtral-8x22b",
    }
    assert set(by_price[-3:]) == unknown  # unknown prices last

    by_context = select(sort="context")
    assert by_context[:4] == [
        "anthropic/claude-3.5-sonnet",
        "meta-llama/llama-3.1-70b-instruct",
        "openai/gpt-4o",
        "mistralai/mixtral-8x7b-instruct",
    ]
    assert by_context[4:6] == ["openrouter/auto", "google/gemini-2.0-flash-001"]

    by_name = select(sort="name")
    assert by_name[:4] == sorted(DEFAULT_RECOMMENDED_MODELS, key=lambda i: parsed()[i].name)
