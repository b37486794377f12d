"""The models an agent lets its callers choose, and one turn's choice among them.

The operator decides what may be chosen (`allowed_models` in the agents file or its run-time
override: a list of ids, `"*"` for every catalog model with a known price, absent for the agent's
model alone); the caller chooses within it, per turn or per conversation. The agent's model is
always allowed and is the default.

A model on the list that has left OpenRouter's catalog stays listed (with a warning) and is
refused for the turns that name it (422 unknown_model). A conversation whose model is no longer
allowed, or has left the catalog, goes on with the agent's default: a conversation never
dead-ends on a choice the operator has since taken away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.agents.config import EVERY_PRICED_MODEL, AgentConfig, ReasoningConfig
from app.core.caching import CachePrices, needs_breakpoints
from app.core.model_id import check_model_id
from app.errors import ApiError
from app.upstream.models_catalog import CatalogView, ModelInfo

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


@dataclass(frozen=True, slots=True)
class AllowedModel:
    id: str
    info: ModelInfo | None  # None: not in the catalog (any more, or it is unavailable)
    default: bool

    def usable(self, catalog: CatalogView) -> bool:
        """Whether a turn may choose it: the agent's own model always (as before choices
        existed), another while the catalog lists it (or cannot say)."""
        return self.default or self.info is not None or not catalog.available

    def warning(self, catalog: CatalogView) -> str | None:
        if self.info is not None or not catalog.available:
            return None
        if self.default:
            return (
                f"{self.id} is not in OpenRouter's model catalog: its price and context are unknown"
            )
        return f"{self.id} is not in OpenRouter's model catalog (any more): turns cannot use it"


def allowed_models(agent: AgentConfig, *, model: str, catalog: CatalogView) -> list[AllowedModel]:
    """The models `agent` (whose effective model is `model`) allows, its own first."""
    if agent.allowed_models == EVERY_PRICED_MODEL:
        others = [m.id for m in catalog.models if m.pricing.known and m.id != model]
    else:
        others = [m for m in dict.fromkeys(agent.allowed_models or ()) if m != model]
    return [AllowedModel(i, catalog.find(i), i == model) for i in (model, *others)]


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """What a turn sends upstream as its model, resolved before anything is written."""

    model: str
    fallback_models: tuple[str, ...]
    max_tokens: int
    reasoning: dict[str, Any] | None  # OpenRouter's `reasoning` object
    # The smallest context window of the model and its fallbacks (what is sent must fit each
    # one it may end on); None: none of them is known.
    context_length: int | None
    # The cache prices of the model and its fallbacks that have them (by model id): what a
    # generation's cache saving is computed with, whichever of them answers.
    cache_prices: tuple[tuple[str, CachePrices], ...] = ()
    # Whether the turn marks `cache_control` breakpoints (app/core/caching.py's rule, for the
    # model asked, and the agent's `prompt_caching`).
    breakpoints: bool = False
    # What the model and each fallback it may end on all take (`image_input`, `file_input`,
    # …: app/upstream/models_catalog.py); None: not one of them is in the catalog.
    capabilities: frozenset[str] | None = None


def requested_model(value: Any) -> str | None:
    """A turn's `model` field (bodies and query strings): a model id, or absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", "`model` must be an OpenRouter model id")
    try:
        return check_model_id(value)
    except ValueError:
        raise ApiError(
            422, "invalid_field", "`model` must be an OpenRouter model id like openai/gpt-4o"
        ) from None


def requested_effort(value: Any) -> str | None:
    """A turn's `reasoning`: `{"effort": …}` in a body, the effort alone in a query string."""
    if value is None:
        return None
    effort = value.get("effort") if isinstance(value, dict) and set(value) <= {"effort"} else value
    if effort not in EFFORTS:
        raise ApiError(
            422,
            "invalid_field",
            f'`reasoning` must be {{"effort": …}} with one of {", ".join(EFFORTS)}',
        )
    return effort


def choose(
    agent: AgentConfig,
    *,
    default_model: str,
    catalog: CatalogView,
    requested: str | None = None,
    remembered: str | None = None,
    effort: str | None = None,
    allowed: list[AllowedModel] | None = None,
) -> ModelChoice:
    """The turn's model: `requested` (it must be allowed: 422 model_not_allowed, or
    unknown_model when it is not in the catalog), else the conversation's `remembered` one while
    it is still allowed and listed, else the agent's; with `effort` (422 reasoning_not_supported
    for a model that does not take `reasoning`). `allowed`: `allowed_models` of the same
    agent and catalog, when the caller has it already (the model list chooses each in turn)."""
    model = agent.effective_model(default_model)
    if allowed is None:
        allowed = allowed_models(agent, model=model, catalog=catalog)
    usable = {entry.id: entry for entry in allowed if entry.usable(catalog)}
    if requested is not None:
        entry = usable.get(requested)
        if entry is None:
            listed = any(e.id == requested for e in allowed)
            if listed or (catalog.available and catalog.find(requested) is None):
                raise ApiError(
                    422,
                    "unknown_model",
                    f"{requested} is not in OpenRouter's model catalog; see "
                    f"GET /api/agents/{{agent}}/models for the models you can choose",
                    details={"model": requested},
                )
            raise ApiError(
                422,
                "model_not_allowed",
                f"{requested} is not among the models this agent allows; see "
                "GET /api/agents/{agent}/models for the ones you can choose",
                details={"model": requested},
            )
    else:
        entry = usable.get(remembered or model) or usable[model]
    info = entry.info
    takes_reasoning = info is not None and "reasoning" in info.capabilities
    reasoning = agent.reasoning
    if effort is not None:
        if effort != "none" and info is not None and not takes_reasoning:
            raise ApiError(
                422,
                "reasoning_not_supported",
                f"{entry.id} does not take `reasoning`: leave it out, or choose a model whose "
                "capabilities list reasoning",
                details={"model": entry.id},
            )
        # The caller sets how hard it thinks; whether the thinking is shown stays the agent's.
        reasoning = ReasoningConfig(
            effort=effort, exclude=None if agent.reasoning is None else agent.reasoning.exclude
        )
    elif reasoning is not None and not entry.default and not takes_reasoning:
        reasoning = None  # the agent's setting is for its model: another may refuse it
    fallbacks = tuple(m for m in agent.fallback_models if m != entry.id)
    windows = [
        found.context_length
        for found in (info, *(catalog.find(m) for m in fallbacks))
        if found is not None and found.context_length is not None
    ]
    limit = info.output_limit if info is not None else None
    prices = {
        model_id: found.pricing.cache_prices()
        for model_id in (entry.id, *fallbacks)
        if (found := catalog.find(model_id)) is not None
    }
    known = [f for f in (info, *(catalog.find(m) for m in fallbacks)) if f is not None]
    return ModelChoice(
        capabilities=frozenset.intersection(*(f.capabilities for f in known)) if known else None,
        model=entry.id,
        fallback_models=fallbacks,
        max_tokens=min(agent.max_tokens, limit) if limit else agent.max_tokens,
        reasoning=None if reasoning is None else reasoning.upstream(),
        context_length=min(windows) if windows else None,
        cache_prices=tuple((m, p) for m, p in prices.items() if p is not None),
        breakpoints=agent.prompt_caching and needs_breakpoints(entry.id, prices.get(entry.id)),
    )
