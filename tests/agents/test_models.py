"""The models an agent allows and one turn's choice among them (app/agents/models.py), against
the simulator's catalog."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.agents.config import AgentConfig, ReasoningConfig
from app.agents.models import allowed_models, choose, requested_effort, requested_model
from app.dev.simulator_models import simulated_models
from app.errors import ApiError
from app.upstream.models_catalog import BOOTSTRAP_MODELS, CatalogView, Snapshot, parse_model

GPT4O = "openai/gpt-4o"
MINI = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-3.5-sonnet"
R1 = "deepseek/deepseek-r1"
SMALL = "gryphe/mythomax-l2-13b"


def catalog(*, drop: tuple[str, ...] = (), bootstrap: bool = False) -> CatalogView:
    raw = BOOTSTRAP_MODELS if bootstrap else simulated_models()["data"]
    models = tuple(m for m in map(parse_model, raw) if m is not None and m.id not in drop)
    origin = "bootstrap" if bootstrap else "live"
    snapshot = Snapshot(models, origin, None if bootstrap else datetime.now(UTC))
    return CatalogView(snapshot, "bootstrap" if bootstrap else "cache", bootstrap, 0.0, None)


def agent(**fields) -> AgentConfig:
    return AgentConfig(model=GPT4O, system_prompt="Be brief.", **fields)


def ids(config: AgentConfig, view: CatalogView | None = None) -> list[str]:
    return [m.id for m in allowed_models(config, model=GPT4O, catalog=view or catalog())]


def refusal(**kwargs) -> ApiError:
    with pytest.raises(ApiError) as refused:
        choose(kwargs.pop("config", agent(allowed_models=(MINI,))), default_model=GPT4O, **kwargs)
    return refused.value


def test_absent_allows_the_agent_s_model_alone():
    assert ids(agent()) == [GPT4O]


def test_a_list_allows_its_models_and_the_agent_s_first():
    assert ids(agent(allowed_models=(MINI, GPT4O, CLAUDE, MINI))) == [GPT4O, MINI, CLAUDE]


def test_star_allows_every_catalog_model_with_a_known_price():
    allowed = ids(agent(allowed_models="*"))
    assert allowed[0] == GPT4O and SMALL in allowed and CLAUDE in allowed
    assert "openrouter/auto" not in allowed  # "-1": priced per call, not known
    assert "thedrummer/rocinante-12b" not in allowed  # a price that is not a number
    assert "cognitivecomputations/dolphin-mixtral-8x22b" not in allowed  # no pricing at all


def test_a_listed_model_that_left_the_catalog_stays_listed_with_a_warning():
    view = catalog(drop=(CLAUDE,))
    [_, gone] = allowed_models(agent(allowed_models=(CLAUDE,)), model=GPT4O, catalog=view)
    assert gone.id == CLAUDE and gone.info is None and not gone.usable(view)
    assert "not in OpenRouter's model catalog" in gone.warning(view)


def test_without_a_request_the_conversation_s_model_then_the_agent_s():
    config = agent(allowed_models=(MINI,))
    view = catalog()
    assert choose(config, default_model=GPT4O, catalog=view).model == GPT4O
    assert choose(config, default_model=GPT4O, catalog=view, remembered=MINI).model == MINI
    # No longer allowed, or gone from the catalog: the agent's, never a dead end.
    assert choose(agent(), default_model=GPT4O, catalog=view, remembered=MINI).model == GPT4O
    gone = catalog(drop=(MINI,))
    assert choose(config, default_model=GPT4O, catalog=gone, remembered=MINI).model == GPT4O


def test_a_requested_model_must_be_allowed():
    refused = refusal(catalog=catalog(), requested=CLAUDE)
    assert (refused.status, refused.code) == (422, "model_not_allowed")
    assert refused.details == {"model": CLAUDE}
    refused = refusal(catalog=catalog(), requested="acme/imaginary-1")
    assert (refused.status, refused.code) == (422, "unknown_model")
    refused = refusal(catalog=catalog(drop=(MINI,)), requested=MINI)
    assert refused.code == "unknown_model"  # allowed, but it left the catalog
    assert (
        choose(
            agent(allowed_models=(MINI,)), default_model=GPT4O, catalog=catalog(), requested=MINI
        ).model
        == MINI
    )


def test_with_the_catalog_unavailable_the_list_is_all_there_is_to_check():
    view = catalog(bootstrap=True)
    config = agent(allowed_models=("acme/private-1",))
    choice = choose(config, default_model=GPT4O, catalog=view, requested="acme/private-1")
    assert choice.model == "acme/private-1" and choice.context_length is None
    assert refusal(catalog=view, requested=CLAUDE).code == "model_not_allowed"


def test_the_choice_takes_what_its_model_allows():
    config = agent(allowed_models=(SMALL, R1), max_tokens=8000, fallback_models=(MINI,))
    small = choose(config, default_model=GPT4O, catalog=catalog(), requested=SMALL)
    assert small.max_tokens == 4096  # the model's output limit
    assert small.context_length == 4096  # the smallest window of the model and its fallbacks
    assert small.fallback_models == (MINI,)
    default = choose(config, default_model=GPT4O, catalog=catalog())
    assert default.max_tokens == 8000 and default.context_length == 128000


def test_reasoning_effort_only_for_models_that_take_it():
    config = agent(allowed_models=(R1,), reasoning=ReasoningConfig(exclude=True))
    view = catalog()
    choice = choose(config, default_model=GPT4O, catalog=view, requested=R1, effort="high")
    assert choice.reasoning == {"effort": "high", "exclude": True}  # the agent's exclude kept
    refused = refusal(config=config, catalog=view, effort="high")
    assert (refused.status, refused.code) == (422, "reasoning_not_supported")
    assert choose(config, default_model=GPT4O, catalog=view, effort="none").reasoning == {
        "effort": "none",
        "exclude": True,
    }


def test_the_agent_s_reasoning_is_not_sent_to_another_model_that_cannot_take_it():
    config = agent(allowed_models=(MINI,), reasoning=ReasoningConfig(effort="low"))
    view = catalog()
    assert choose(config, default_model=GPT4O, catalog=view, requested=MINI).reasoning is None
    assert choose(config, default_model=GPT4O, catalog=view).reasoning == {"effort": "low"}


@pytest.mark.parametrize("value", [1, ["openai/gpt-4o"], "gpt-4o", "openai/"])
def test_a_malformed_model_is_an_invalid_field(value):
    with pytest.raises(ApiError) as refused:
        requested_model(value)
    assert refused.value.code == "invalid_field"


def test_efforts_from_a_body_or_a_query_string():
    assert requested_effort({"effort": "high"}) == "high"
    assert requested_effort("low") == "low"
    assert requested_effort(None) is None
    for bad in ({"effort": "max"}, {"effort": "high", "max_tokens": 5}, 3, "extreme"):
        with pytest.raises(ApiError) as refused:
            requested_effort(bad)
        assert refused.value.code == "invalid_field"
