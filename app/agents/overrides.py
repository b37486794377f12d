"""Agents re-pointed at run time: the agents file is the default, the database holds overrides.

Overrides (model, fallback models, temperature, max_tokens, reasoning, allowed models, prompt
caching) are kept
in memory, loaded at start-up and updated on every change, so resolving an agent costs no database
read per message; changes made by other processes are re-read (`refresh`, see
app/replies/signals.py).
A run copies its agent's effective config when it starts, so a change applies to the next reply
and never to one in flight.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from app.agents.config import AgentConfig, AllowedModels, ReasoningConfig
from app.core.model_id import ModelId
from app.errors import ApiError
from app.storage.store import Store
from app.upstream.models_catalog import CatalogView


@dataclass(frozen=True)
class AgentOverride:
    """None in a field means "as in the agents file"."""

    model: str | None = None
    fallback_models: tuple[str, ...] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    reasoning: ReasoningConfig | None = None
    allowed_models: AllowedModels | None = None
    prompt_caching: bool | None = None
    updated_at: datetime | None = None

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS if getattr(self, name) is not None}

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "fallback_models": None if self.fallback_models is None else list(self.fallback_models),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "reasoning": None if self.reasoning is None else self.reasoning.upstream(),
            "allowed_models": allowed_json(self.allowed_models),
            "prompt_caching": self.prompt_caching,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


def allowed_json(allowed: AllowedModels | None) -> list[str] | str | None:
    """`allowed_models` as JSON has it (and the database keeps it): "*", a list, or null."""
    return allowed if allowed is None or isinstance(allowed, str) else list(allowed)


def _allowed(value: Any) -> AllowedModels | None:
    return value if value is None or isinstance(value, str) else tuple(value)


class Agents:
    """The agents file's configs merged with the overrides; `effective(name)` is what runs use."""

    def __init__(self, defaults: dict[str, AgentConfig]) -> None:
        self.defaults = defaults
        self._overrides: dict[str, AgentOverride] = {}
        # Keeps the database and the in-memory copy in the same order under concurrent writes.
        self._lock = asyncio.Lock()

    def __contains__(self, name: object) -> bool:
        return name in self.defaults

    def names(self) -> list[str]:
        return list(self.defaults)

    def override(self, name: str) -> AgentOverride | None:
        return self._overrides.get(name)

    def effective(self, name: str) -> AgentConfig:
        default = self.defaults[name]
        override = self._overrides.get(name)
        return default.model_copy(update=override.changes()) if override else default

    async def load(self, store: Store) -> None:
        self._overrides = await self._read(store)

    async def refresh(self, store: Store) -> None:
        """Re-read the overrides: another process may have changed them (app/replies/signals.py).
        Under the lock, so a change this process makes meanwhile is never undone by an older
        read."""
        async with self._lock:
            overrides = await self._read(store)
            if overrides != self._overrides:
                self._overrides = overrides

    async def _read(self, store: Store) -> dict[str, AgentOverride]:
        overrides = {}
        for row in await store.config.agent_overrides():
            if row["agent"] not in self.defaults:
                continue  # an agent since removed from the file: its override is moot
            fallbacks, reasoning = row["fallback_models"], row["reasoning"]
            overrides[row["agent"]] = AgentOverride(
                model=row["model"],
                fallback_models=None if fallbacks is None else tuple(fallbacks),
                temperature=row["temperature"],
                max_tokens=row["max_tokens"],
                reasoning=None if reasoning is None else ReasoningConfig.model_validate(reasoning),
                allowed_models=_allowed(row["allowed_models"]),
                prompt_caching=row["prompt_caching"],
                updated_at=row["updated_at"],
            )
        return overrides

    async def put(self, store: Store, name: str, override: AgentOverride) -> AgentOverride:
        async with self._lock:
            updated_at = await store.config.save_agent_override(
                agent=name,
                model=override.model,
                fallback_models=None
                if override.fallback_models is None
                else list(override.fallback_models),
                temperature=override.temperature,
                max_tokens=override.max_tokens,
                reasoning=None if override.reasoning is None else override.reasoning.upstream(),
                allowed_models=allowed_json(override.allowed_models),
                prompt_caching=override.prompt_caching,
            )
            saved = replace(override, updated_at=updated_at)
            self._overrides[name] = saved
        return saved

    async def reset(self, store: Store, name: str) -> bool:
        async with self._lock:
            found = await store.config.delete_agent_override(agent=name)
            self._overrides.pop(name, None)
        return found


# --- validating a change ------------------------------------------------------------------------


class OverrideChange(BaseModel):
    """A PUT body: absent or null fields follow the agents file. Strict where JSON could pass
    for a number it is not (`true`, `"1"`, `1.5` for a whole number)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelId | None = None
    fallback_models: tuple[ModelId, ...] | None = None
    temperature: Annotated[float, Strict(), Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    max_tokens: Annotated[int, Strict(), Field(ge=1)] | None = None
    reasoning: ReasoningConfig | None = None
    allowed_models: AllowedModels | None = None
    prompt_caching: Annotated[bool, Strict()] | None = None


FIELDS = tuple(OverrideChange.model_fields)
# Our message for any fault in a field, whatever pydantic's reason: the API's wording predates it.
_FAULTS = {
    "model": "`model` must be an OpenRouter model id like openai/gpt-4o",
    "fallback_models": "`fallback_models` must be a list of model ids",
    "fallback_models[]": "`fallback_models[]` must be an OpenRouter model id like openai/gpt-4o",
    "temperature": "`temperature` must be a number from 0 to 2",
    "max_tokens": "`max_tokens` must be a whole number of at least 1",
    "reasoning": "`reasoning` must be an object with `effort` or `max_tokens` (not both), "
    "and `exclude`",
    "allowed_models": '`allowed_models` must be "*" (every model with a known price) or a list '
    "of model ids",
    "allowed_models[]": '`allowed_models` must be "*" (every model with a known price) or a '
    "list of OpenRouter model ids like openai/gpt-4o",
    "prompt_caching": "`prompt_caching` must be true or false",
    "reasoning[]": "`reasoning` takes `effort` (none, minimal, low, medium, high or xhigh) or "
    "`max_tokens` (a whole number of at least 1), not both, and `exclude` (true or false)",
}


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_field", message)


def parse_override(body: dict[str, Any]) -> AgentOverride:
    """The fields of a PUT body, type- and range-checked; absent or null fields follow the file."""
    try:
        change = OverrideChange.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = sorted(
            str(e["loc"][0])
            for e in errors
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 1  # not inside `reasoning`
        )
        if unknown:
            raise _invalid(
                f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}"
            ) from None
        field, *item = errors[0]["loc"]
        raise _invalid(_FAULTS[f"{field}[]" if item else str(field)]) from None
    if not change.model_fields_set:
        raise _invalid(f"give at least one of {', '.join(FIELDS)}")
    # Attributes, not model_dump(): `reasoning` stays a ReasoningConfig, not a dict.
    return AgentOverride(**{name: getattr(change, name) for name in FIELDS})


def check_against_catalog(
    override: AgentOverride, *, default: AgentConfig, default_model: str, catalog: CatalogView
) -> list[str]:
    """Raise 422 for a model the catalog lacks or a max_tokens above the model's limit; return
    warnings instead when the catalog is unavailable (only the bootstrap list is there)."""
    merged = default.model_copy(update=override.changes())
    model = merged.effective_model(default_model)
    named = [model, *merged.fallback_models]
    # The list a change sets must name models that exist; one that leaves the catalog later
    # is only refused for the turns that choose it (app/agents/models.py).
    listed = [] if isinstance(override.allowed_models, str) else override.allowed_models or []
    checked = [*named, *(m for m in listed if m not in named)]
    if not catalog.available:
        return [
            f"the model catalog is unavailable ({catalog.refresh_error or 'not loaded'}): "
            f"could not check that {', '.join(checked)} exist(s) or the max_tokens limit"
        ]
    missing = [model_id for model_id in checked if catalog.find(model_id) is None]
    if missing:
        raise ApiError(
            422,
            "unknown_model",
            f"{', '.join(missing)} is not in OpenRouter's model catalog; "
            "see GET /api/models for the ids",
        )
    if merged.reasoning is not None and merged.reasoning.thinks:
        # `supported_parameters` names "reasoning" for the models that take it; sent to
        # another model, it is ignored or refused, and the agent would not think as set.
        unable = [m for m in named if "reasoning" not in catalog.find(m).capabilities]
        if unable:
            raise ApiError(
                422,
                "reasoning_not_supported",
                f"{', '.join(unable)} does not take `reasoning` (see the model's "
                "capabilities in GET /api/models); leave `reasoning` out or set effort none",
            )
    limit = catalog.find(model).output_limit
    if limit is not None and merged.max_tokens > limit:
        origin = "" if override.max_tokens is not None else " (from the agents file)"
        raise ApiError(
            422,
            "max_tokens_too_large",
            f"max_tokens {merged.max_tokens}{origin} is above {model}'s limit of {limit}; "
            "send a smaller max_tokens",
        )
    return []
