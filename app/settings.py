"""One settings class, read from the environment and `.env`.

Nothing here is instantiated at import time: `create_app()` builds a `Settings()` (or takes one
from a test), so every test can run the app against its own database and fake upstream.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.model_id import ModelId
from app.core.money import MAX_BUDGET_USD

ORIGIN = re.compile(r"^https?://[^/\s]+$")
DEFAULT_AGENTS_FILE = Path(__file__).parent / "agents" / "agents.toml"
DEFAULT_DATABASE_URL = "sqlite:///./data/streamchat.db"
# The model the development simulator pretends to be when none is configured.
DEV_FALLBACK_MODEL = "openai/gpt-4o-mini"
# The algorithms AUTH_JWT_ALGORITHMS may name: HMAC ones verify with AUTH_JWT_SECRET only, the
# others with AUTH_JWKS_URL's keys only, so a token cannot choose its key's kind (alg confusion).
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
JWKS_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
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


def is_loopback(host: str) -> bool:
    """Whether a listening address (HOST) or a URL's host is reachable from this machine only."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DatabaseSettings(BaseSettings):
    """What `python -m app migrate` reads: the release phase needs no OpenRouter key or model."""

    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,
        # A refusal to start (a traceback under `uvicorn --factory`) must not print the input:
        # it holds every secret from the environment, and pydantic shows part of each value.
        hide_input_in_errors=True,
    )

    app_env: Literal["development", "production", "test"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    # PostgreSQL only. Per process: Heroku's Essential plans allow 20 connections in all, and a
    # deploy briefly runs old and new web dynos plus the release phase side by side.
    database_pool_min: int = Field(1, ge=1)
    database_pool_max: int = Field(5, ge=1)
    database_connect_timeout: float = Field(10.0, gt=0)
    # Longest one statement may run before it is cancelled (0 = no limit).
    database_command_timeout: float = Field(30.0, ge=0)
    # SQLite only: how long a statement waits for another process's lock on the file before
    # the database counts as unavailable (a turn then answers 503 database_unavailable).
    database_busy_timeout: float = Field(30.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @model_validator(mode="after")
    def _pool_bounds(self) -> DatabaseSettings:
        if self.database_pool_min > self.database_pool_max:
            raise ValueError("DATABASE_POOL_MIN must not exceed DATABASE_POOL_MAX")
        return self

    def require_database_for_release(self) -> None:
        """`python -m app migrate` in production with DATABASE_URL unset would migrate the
        default SQLite file, on a disk the platform discards, and exit 0: a release phase that
        looks like success. `serve` warns as loudly (app/main.py); this one refuses."""
        if self.app_env == "production" and "database_url" not in self.model_fields_set:
            raise ConfigError(
                "invalid configuration: DATABASE_URL must be set when APP_ENV=production "
                "(migrate would migrate ./data/streamchat.db, a file the "
                "platform discards)"
            )


class Settings(DatabaseSettings):
    openrouter_api_key: SecretStr | None = None
    openrouter_model: ModelId | None = None
    openrouter_base_url: AnyHttpUrl = AnyHttpUrl("https://openrouter.ai/api/v1")
    # None means "decide from APP_ENV and the key": on in development without a key, off otherwise.
    openrouter_simulator: bool | None = None
    upstream_connect_timeout: float = Field(10.0, gt=0)
    upstream_read_timeout: float = Field(60.0, gt=0)

    app_url: str = "http://localhost:8000"
    app_title: str = "streamchat"

    # None: migrate at start-up in development and tests; production runs `python -m app migrate`.
    migrate_on_start: bool | None = None
    agents_file: Path = DEFAULT_AGENTS_FILE

    # Where `python -m app serve` listens; the Procfile sets HOST=0.0.0.0, Heroku sets PORT.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Server processes (uvicorn workers). Heroku's Python buildpack sets it by dyno size.
    web_concurrency: int = Field(1, ge=1)
    max_message_chars: int = Field(32_000, ge=1)
    # None: `body_limit`, computed from max_message_chars.
    max_body_bytes: int | None = Field(None, ge=1)
    # Attachments (docs/attachments.md): the largest file one upload may be, and the bytes of
    # uploads a user may keep at once, in bytes.
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    upload_quota_bytes: int = Field(100 * 1024 * 1024, ge=1)
    # OpenRouter's file-parser engine for PDFs sent to a model that does not read files itself:
    # `cloudflare-ai` (free), `mistral-ocr` (scans too; $2 per 1,000 pages); `off`: no parser,
    # such a model refuses PDFs (422 model_cannot_read_files).
    pdf_engine: Literal["cloudflare-ai", "mistral-ocr", "off"] = "cloudflare-ai"
    # Origins whose pages may call the API (the coach widget embedded elsewhere); comma-separated.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Who may show the chat page and the costs page in a frame: their CSP `frame-ancestors`
    # (`'self'`, `'none'`, or origins separated by spaces: a host app embedding the page).
    csp_frame_ancestors: str = "'self'"
    ping_interval: float = Field(15.0, gt=0, le=15.0)
    # A `"stream": false` answer not ready by then commits a 200 and keeps the connection alive
    # with whitespace every PING_INTERVAL: Heroku's router gives up on a first byte after 30 s.
    nonstream_keepalive_after: float = Field(20.0, gt=0, lt=30.0)
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
    # A chat's first reply gets it a title from the agents file's `titler` (off, or no such
    # agent: the question's first words stay the title).
    auto_titles: bool = True

    # Several processes (docs/deploy.md): with Redis, every process serves every live reply
    # token by token, and stops and agent changes arrive at once. Heroku's Key-Value Store
    # sets REDIS_URL (rediss://). Without it, all of that goes through the database.
    redis_url: str | None = None
    # Entries kept per reply stream (about one per token); a longer reply's followers in
    # other processes read it from the database's checkpoints.
    redis_stream_maxlen: int = Field(10_000, ge=100)
    # Seconds a finished reply's stream stays in Redis for late followers.
    redis_stream_ttl: float = Field(300.0, gt=0)

    # The model catalog (GET /api/models) and run-time agent changes.
    models_cache_ttl: float = Field(3600.0, ge=0)
    # Comma-separated in the environment (NoDecode: not parsed as JSON).
    recommended_models: Annotated[tuple[ModelId, ...], NoDecode] = DEFAULT_RECOMMENDED_MODELS
    # Guards the admin routes (PUT/DELETE /api/catalog/agents/*, GET /api/admin/costs); unset
    # (and no JWT admins) means they are refused.
    admin_token: SecretStr | None = None

    # Spend control (docs/budgets.md). USD amounts; unset (or empty) means no such limit.
    budget_user_daily_usd: Decimal | None = Field(None, ge=0)
    budget_user_monthly_usd: Decimal | None = Field(None, ge=0)
    budget_global_daily_usd: Decimal | None = Field(None, ge=0)
    limit_user_rpm: int | None = Field(None, ge=1)
    limit_user_concurrent: int | None = Field(None, ge=1)
    limit_process_concurrent: int | None = Field(None, ge=1)
    # Where the request-rate windows live: memory:// (per process) or redis://… (shared).
    # Unset: REDIS_URL's Redis when it is set, else memory://.
    limits_storage_uri: str | None = None
    # Operations (docs/operations.md). GET /metrics needs `Authorization: Bearer METRICS_TOKEN`;
    # unset: /metrics answers 404, as if it did not exist.
    metrics_token: SecretStr | None = None
    # Time each turn's way to its first token, stage by stage, for `bench --stages`
    # (app/core/stages.py; read at GET /api/admin/stages). Off: no cost but a check per stage.
    stage_probe: bool = False
    # json: one JSON object per log line. None: json in production, text otherwise.
    log_format: Literal["json", "text"] | None = None
    # /readyz logs a warning (still ready) when the key's remaining credit is below this (USD).
    credits_warning_usd: Decimal = Field(Decimal(5), ge=0)  # money: never a float

    @field_validator("openrouter_model", mode="before")
    @classmethod
    def _blank_model(cls, value: object) -> object:
        # OPENROUTER_MODEL= (blank, as .env.example leaves it) means unset, not a bad id.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("budget_user_daily_usd", "budget_user_monthly_usd", "budget_global_daily_usd")
    @classmethod
    def _budget(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value > MAX_BUDGET_USD:
            raise ValueError(
                f"must be at most {MAX_BUDGET_USD:,} USD (amounts are counted in 64-bit "
                "pico-dollars)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return value

    @field_validator("limits_storage_uri")
    @classmethod
    def _limits_storage_uri(cls, value: str | None) -> str | None:
        # The message never repeats the value: a Redis URI carries its password.
        if value is None or not value.strip():
            return None
        value = value.strip().removeprefix("async+")
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("must start with memory://, redis:// or rediss://")
        return value

    @field_validator("recommended_models", mode="before")
    @classmethod
    def _recommended(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
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

    @field_validator("csp_frame_ancestors")
    @classmethod
    def _frame_ancestors(cls, value: str) -> str:
        # Each source alone, so a value cannot end the directive and start another (`;`).
        sources = value.split()
        for source in sources:
            if source not in ("'self'", "'none'") and not ORIGIN.match(source.rstrip("/")):
                raise ValueError(
                    f"{source!r} is not 'self', 'none' or an origin like https://a.example"
                )
        if not sources:
            raise ValueError("give 'self', 'none' or the origins that may frame the page")
        return " ".join(sources)

    @field_validator("openrouter_api_key", "admin_token", "metrics_token")
    @classmethod
    def _blank_key(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

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
    def logs_as_json(self) -> bool:
        if self.log_format is not None:
            return self.log_format == "json"
        return self.app_env == "production"

    @property
    def shutdown_timeout(self) -> int:
        """uvicorn's graceful-shutdown timeout: SHUTDOWN_GRACE for live replies, then a few
        seconds for their final saves and events (SHUTDOWN_MARGIN in app/http/sse.py) and the
        lifespan's close. Heroku sends SIGKILL 30 s after SIGTERM: keep this under it."""
        return int(self.shutdown_grace) + 5

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between the heartbeats of a process's live replies: often enough that an
        orphan is told from a live reply, and that a stop request through the database
        arrives within one."""
        return min(self.checkpoint_interval, self.stale_reply_after / 3)

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
    def upload_body_limit(self) -> int:
        """The largest body `POST /api/uploads` reads: MAX_UPLOAD_BYTES of file, and 64 KiB for
        the multipart framing around it (boundaries, the part's headers)."""
        return self.max_upload_bytes + 64 * 1024

    @property
    def default_model(self) -> str:
        return self.openrouter_model or DEV_FALLBACK_MODEL

    @property
    def base_url(self) -> str:
        return str(self.openrouter_base_url).rstrip("/")

    # --- Users and tokens (docs/auth.md) -------------------------------------------------------
    # Last in the class, so `_auth` runs after the checks above: one refusal at a time, in order.
    # None: `dev` (every caller is DEV_USER_ID) in development and tests, `jwt` otherwise.
    auth_mode: Literal["jwt", "dev"] | None = None
    auth_jwt_secret: SecretStr | None = None
    auth_jwks_url: AnyHttpUrl | None = None
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None
    # Seconds of clock difference between the host app and us forgiven on exp/nbf/iat.
    auth_jwt_leeway: float = Field(30.0, ge=0, le=300)
    # Empty: HS256 with a secret, RS256/ES256/EdDSA with a JWKS. Comma-separated.
    auth_jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = ()
    auth_user_claim: str = Field("sub", min_length=1)
    auth_admin_claim: str | None = None
    auth_admin_value: str | None = None
    # Bounds one JWKS fetch, start to end (not per read): a slow JWKS must not hold requests long.
    auth_jwks_timeout: float = Field(5.0, gt=0, le=30)
    # Signs the stream_url's stream tokens; see `stream_token_root` for what happens when unset.
    stream_token_secret: SecretStr | None = None
    # Seconds a stream token lasts: a long reply and its EventSource reconnects.
    stream_token_ttl: float = Field(3600.0, gt=0)

    @field_validator("auth_jwt_algorithms", mode="before")
    @classmethod
    def _algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        return value

    @field_validator(
        "auth_jwt_secret",
        "stream_token_secret",
        "auth_jwt_audience",
        "auth_jwt_issuer",
        "auth_admin_claim",
        "auth_admin_value",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _auth(self) -> Settings:
        # Each message names settings only: never a value (two of them are secrets).
        if self.app_env == "production" and self.auth == "dev":
            raise ValueError("AUTH_MODE=dev is not allowed when APP_ENV=production (use jwt)")
        if self.auth_mode is None and self.auth == "dev":
            # Dev mode lets anyone spend the key and read every conversation: chosen, never
            # fallen into by leaving APP_ENV unset on a machine others can reach.
            if not is_loopback(self.host):
                raise ValueError(
                    "AUTH_MODE must be set (jwt, or dev: every caller is DEV_USER_ID) when HOST "
                    "is not a loopback address"
                )
            if self.app_env == "development" and self.openrouter_api_key is not None:
                raise ValueError(
                    "AUTH_MODE must be set (jwt, or dev: every caller is DEV_USER_ID) when "
                    "OPENROUTER_API_KEY is set in development"
                )
        for name, secret in (
            ("AUTH_JWT_SECRET", self.auth_jwt_secret),
            ("STREAM_TOKEN_SECRET", self.stream_token_secret),
        ):
            # RFC 7518 3.2: an HMAC key at least as long as the hash (32 bytes for SHA-256).
            if secret is not None and len(secret.get_secret_value().encode()) < 32:
                raise ValueError(f"{name} must be at least 32 bytes long")
        if self.app_env == "production":
            # A public service's operator tokens: guessable ones hand out the admin routes
            # and the metrics. `openssl rand -hex 32` makes one.
            for name, token in (
                ("ADMIN_TOKEN", self.admin_token),
                ("METRICS_TOKEN", self.metrics_token),
            ):
                if token is not None and len(token.get_secret_value().encode()) < 32:
                    raise ValueError(
                        f"{name} must be at least 32 bytes long when APP_ENV=production "
                        "(random: `openssl rand -hex 32`)"
                    )
            jwks = self.auth_jwks_url
            if jwks is not None and jwks.scheme != "https" and not is_loopback(jwks.host or ""):
                # Whoever can change the keys on the wire can sign any user's token.
                raise ValueError(
                    "AUTH_JWKS_URL must be https:// when APP_ENV=production (http:// only on "
                    "a loopback address)"
                )
        if (self.auth_admin_claim is None) != (self.auth_admin_value is None):
            raise ValueError("set both AUTH_ADMIN_CLAIM and AUTH_ADMIN_VALUE, or neither")
        if self.auth == "dev":
            return self
        if self.auth_jwt_secret is None and self.auth_jwks_url is None:
            raise ValueError("AUTH_MODE=jwt needs AUTH_JWT_SECRET or AUTH_JWKS_URL")
        for algorithm in self.jwt_algorithms:
            if algorithm in HMAC_ALGORITHMS:
                if self.auth_jwt_secret is None:
                    raise ValueError(f"AUTH_JWT_ALGORITHMS: {algorithm} needs AUTH_JWT_SECRET")
            elif algorithm in JWKS_ALGORITHMS:
                if self.auth_jwks_url is None:
                    raise ValueError(f"AUTH_JWT_ALGORITHMS: {algorithm} needs AUTH_JWKS_URL")
            else:
                raise ValueError(
                    f"AUTH_JWT_ALGORITHMS: {algorithm!r} is not one of "
                    f"{', '.join((*HMAC_ALGORITHMS, *JWKS_ALGORITHMS))}"
                )
        if self.app_env == "production" and self.stream_token_root is None:
            raise ValueError(
                "STREAM_TOKEN_SECRET (or AUTH_JWT_SECRET) must be set when APP_ENV=production: "
                "every process must sign stream tokens with the same key"
            )
        return self

    @property
    def auth(self) -> Literal["jwt", "dev"]:
        if self.auth_mode is not None:
            return self.auth_mode
        return "dev" if self.app_env in ("development", "test") else "jwt"

    @property
    def jwt_algorithms(self) -> tuple[str, ...]:
        if self.auth_jwt_algorithms:
            return self.auth_jwt_algorithms
        return (("HS256",) if self.auth_jwt_secret else ()) + (
            ("RS256", "ES256", "EdDSA") if self.auth_jwks_url else ()
        )

    @property
    def stream_token_root(self) -> bytes | None:
        """The secret stream-token keys are derived from: STREAM_TOKEN_SECRET, else AUTH_JWT_SECRET
        (whoever holds it can sign any user's JWT already), else None: one process makes a random
        key of its own, which only works while it is the only process (refused in production)."""
        secret = self.stream_token_secret or self.auth_jwt_secret
        return secret.get_secret_value().encode() if secret else None


S = TypeVar("S", bound=DatabaseSettings)


def load_settings(kind: type[S] = Settings) -> S:
    """The settings from the environment and `.env`; a ConfigError names what is wrong.

    The message leaves the values out (`include_input=False`): pydantic's own message shows
    the input, which for a model-level check is every setting, the API key among them.
    """
    try:
        return kind()
    except ValidationError as exc:
        problems = "; ".join(
            _problem(error) for error in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _problem(error: ErrorDetails) -> str:
    setting = ".".join(str(part) for part in error["loc"]).upper()
    message = error["msg"].removeprefix("Value error, ")
    # A check across settings (no `loc`) names them in its own message.
    return f"{setting}: {message}" if setting else message


def refuse_to_start(error: ConfigError) -> NoReturn:
    """End the process with one line on stderr: no traceback, no setting's value."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)
