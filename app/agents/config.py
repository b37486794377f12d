"""Agent configs: which model, temperature and prompt each agent (chat, coach) uses.

They are read once at start-up from a TOML file (`AGENTS_FILE`); a bad file stops the server
with a message naming the agent and the field, rather than failing on the first request.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from app.core.model_id import ModelId, check_model_id
from app.settings import ConfigError

REQUIRED_AGENTS = ("chat", "coach")


class ReasoningConfig(BaseModel):
    """OpenRouter's `reasoning` request object, as an agent asks for it: how hard the model
    thinks (`effort`, OpenAI-style, or `max_tokens`, Anthropic-style: one of the two, as
    OpenRouter takes one) and whether its thinking is left out of the reply (`exclude`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    max_tokens: Annotated[int, Strict(), Field(ge=1)] | None = None
    exclude: Annotated[bool, Strict()] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ReasoningConfig:
        if self.effort is not None and self.max_tokens is not None:
            raise ValueError("give `effort` or `max_tokens`, not both")
        return self

    @property
    def thinks(self) -> bool:
        """Whether this asks for reasoning at all (`effort = "none"` turns it off)."""
        return self.effort != "none"

    def upstream(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# What an agent lets its callers choose (`allowed_models`): a list of model ids, or every model
# of the catalog with a known price. None (absent): the agent's model alone.
EVERY_PRICED_MODEL = "*"
AllowedModels = tuple[ModelId, ...] | Literal["*"]


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = ""
    fallback_models: tuple[ModelId, ...] = ()
    # The models a turn may name besides `model` (always allowed, and the default); see
    # app/agents/models.py.
    allowed_models: AllowedModels | None = None
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(1024, ge=1)
    history_messages: int = Field(20, ge=0)
    system_prompt: str = Field(min_length=1)
    reasoning: ReasoningConfig | None = None  # None: the model's default
    # Mark `cache_control` breakpoints for models that need them (app/replies/breakpoints.py):
    # on unless turned off here or by the agent's override.
    prompt_caching: Annotated[bool, Strict()] = True

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        # Blank is allowed here, and means the server's default model (OPENROUTER_MODEL).
        return check_model_id(value) if value.strip() else ""

    def effective_model(self, default_model: str) -> str:
        return self.model or default_model


def load_agents(path: Path) -> dict[str, AgentConfig]:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"AGENTS_FILE {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"AGENTS_FILE {path} is not valid TOML: {exc}") from exc
    agents: dict[str, AgentConfig] = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"AGENTS_FILE {path}: [{name}] must be a table of settings")
        try:
            agents[name] = AgentConfig.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "?"
            raise ConfigError(
                f"AGENTS_FILE {path}: agent {name!r}, field {field!r}: {first['msg']}"
            ) from exc
    missing = [name for name in REQUIRED_AGENTS if name not in agents]
    if missing:
        raise ConfigError(f"AGENTS_FILE {path}: missing agent(s) {', '.join(missing)}")
    return agents
