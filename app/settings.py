"""One settings class, read from the environment and `.env`.

Nothing here is instantiated at import time: `create_app()` builds a `Settings()` (or takes one
from a test), so every test can run the app against its own database and fake upstream.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlencode

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:/-]*$")
ORIGIN = re.compile(r"^https?://[^/\s]+$")
DEFAULT_AGENTS_FILE = Path(__file__).parent / "agents" / "agents.toml"
# The model the development simulator pretends to be when none is configured.
DEV_FALLBACK_MODEL = "openai/gpt-4o-mini"
DEFAULT_RECOMMENDED_MODELS = (
    "anthropic/claude-3.5-sonnet",
    "openai/gpt-4o",
    "meta-llama/llama-3.1-70b-instruct",
    "mistralai/mixtral-8x7b-instruct",
)


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it and never contains a secret."""


def normalize_database_url(url: str) -> str:
    """Map the URL forms users paste (Heroku's `postgres://`, `sqlite://`) to our drivers.

    libpq's `?sslmode=require` becomes `?ssl=require`: `databases` hands asyncpg only `ssl`, and
    would silently drop `sslmode`, connecting without the encryption the URL asked for.
    """
    url = url.strip()
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg2://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            url = "postgresql://" + url.removeprefix(prefix)
    if url.startswith("sqlite://"):
        url = "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    if not url.startswith(("postgresql://", "sqlite+aiosqlite://")):
        raise ValueError(
            "DATABASE_URL must start with sqlite://, sqlite+aiosqlite://, postgres:// or postgresql://"
        )
    if url.startswith("postgresql://") and "?" in url:
        base, query = url.split("?", 1)
        params = [
            ("ssl" if key == "sslmode" else key, value)
            for key, value in parse_qsl(query, keep_blank_values=True)
        ]
        url = f"{base}?{urlencode(params)}"
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    app_env: Literal["development", "production", "test"] = "development"
    openrouter_api_key: SecretStr | None = None
    openrouter_model: str | None = None
    openrouter_base_url: AnyHttpUrl = AnyHttpUrl("https://openrouter.ai/api/v1")
    # None means "decide from APP_ENV and the key": on in development without a key, off otherwise.
    openrouter_simulator: bool | None = None
    upstream_connect_timeout: float = Field(10.0, gt=0)
    upstream_read_timeout: float = Field(60.0, gt=0)

    app_url: str = "http://localhost:8000"
    app_title: str = "streamchat"

    database_url: str = "sqlite:///./data/streamchat.db"
    # None: migrate at start-up in development and tests; production runs `python -m app migrate`.
    migrate_on_start: bool | None = None
    # PostgreSQL only. Per process: Heroku's Essential plans allow 20 connections in all, and a
    # deploy briefly runs old and new web dynos plus the release phase side by side.
    database_pool_min: int = Field(1, ge=1)
    database_pool_max: int = Field(5, ge=1)
    database_connect_timeout: float = Field(10.0, gt=0)
    # Longest one statement may run before it is cancelled (0 = no limit).
    database_command_timeout: float = Field(30.0, ge=0)
    agents_file: Path = DEFAULT_AGENTS_FILE

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_message_chars: int = Field(32_000, ge=1)
    # None: `body_limit`, computed from max_message_chars.
    max_body_bytes: int | None = Field(None, ge=1)
    # Origins whose pages may call the API (the coach widget embedded elsewhere); comma-separated.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    ping_interval: float = Field(15.0, gt=0, le=15.0)
    dev_user_id: str = "dev"

    # Runs: what happens to a reply whatever way its stream ends.
    disconnect_policy: Literal["continue", "cancel"] = "continue"
    # Under "cancel": how long a reply waits for a subscriber to come back (EventSource retries).
    disconnect_cancel_delay: float = Field(5.0, ge=0)
    checkpoint_interval: float = Field(3.0, gt=0)
    # A `streaming` reply no process has touched for this long was left by a dead process.
    stale_reply_after: float = Field(30.0, gt=0)
    shutdown_grace: float = Field(20.0, ge=0)
    upstream_max_retries: int = Field(2, ge=0, le=10)
    upstream_retry_base_delay: float = Field(0.5, ge=0)
    upstream_retry_budget: float = Field(20.0, ge=0)
    generation_lookup_timeout: float = Field(60.0, ge=0)

    # The model catalog (GET /api/models) and run-time agent changes.
    models_cache_ttl: float = Field(3600.0, ge=0)
    # Comma-separated in the environment (NoDecode: not parsed as JSON).
    recommended_models: Annotated[tuple[str, ...], NoDecode] = DEFAULT_RECOMMENDED_MODELS
    # Guards PUT/DELETE /api/catalog/agents/*; unset means those writes are refused.
    admin_token: SecretStr | None = None

    @field_validator("openrouter_model")
    @classmethod
    def _model_id(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not MODEL_ID.match(value):
            raise ValueError(f"must look like provider/model, e.g. openai/gpt-4o (got {value!r})")
        return value

    @field_validator("recommended_models", mode="before")
    @classmethod
    def _recommended(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if isinstance(value, list | tuple):
            for model_id in value:
                if not isinstance(model_id, str) or not MODEL_ID.match(model_id):
                    raise ValueError(f"{model_id!r} does not look like provider/model")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        for origin in value if isinstance(value, list | tuple) else []:
            # A browser's Origin has no path, not even "/": one with it would never match.
            if not isinstance(origin, str) or not ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin like https://example.com[:port]")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("openrouter_api_key", "admin_token")
    @classmethod
    def _blank_key(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    @model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.database_pool_min > self.database_pool_max:
            raise ValueError("DATABASE_POOL_MIN must not exceed DATABASE_POOL_MAX")
        return self

    @model_validator(mode="after")
    def _production_needs_upstream(self) -> Settings:
        if self.app_env == "production" and not self.use_simulator:
            missing = [
                name
                for name, value in (
                    ("OPENROUTER_API_KEY", self.openrouter_api_key),
                    ("OPENROUTER_MODEL", self.openrouter_model),
                )
                if value is None
            ]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)} must be set when APP_ENV=production "
                    "(the local OpenRouter simulator is only used in development)"
                )
        return self

    @property
    def use_simulator(self) -> bool:
        if self.openrouter_simulator is not None:
            return self.openrouter_simulator
        return self.app_env == "development" and self.openrouter_api_key is None

    @property
    def migrate_at_start(self) -> bool:
        if self.migrate_on_start is not None:
            return self.migrate_on_start
        return self.app_env != "production"

    @property
    def body_limit(self) -> int:
        """MAX_BODY_BYTES, or well above the largest valid request: a coach turn's two text
        fields at MAX_MESSAGE_CHARS, each character at its longest in JSON (12 bytes: an emoji
        is one character to Python, and an ASCII-only encoder writes it as `\\ud83d\\ude00`),
        plus 64 KiB for everything else. 833,536 bytes at the default 32,000 characters."""
        return self.max_body_bytes or 2 * self.max_message_chars * 12 + 64 * 1024

    @property
    def default_model(self) -> str:
        return self.openrouter_model or DEV_FALLBACK_MODEL

    @property
    def base_url(self) -> str:
        return str(self.openrouter_base_url).rstrip("/")
