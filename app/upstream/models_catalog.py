"""The model catalog: OpenRouter's `GET /models` in our shape, cached in memory and in the database.

Serving policy (stale-while-revalidate):
- a copy younger than `MODELS_CACHE_TTL` is served as it is;
- an older one is served at once, marked stale, while one background refresh runs;
- with no copy in memory, the last good copy in the database is used (read once per process);
  with none there either, the request waits for the refresh in flight, and if that fails gets a
  small built-in bootstrap list, marked as such.
There is one refresh at a time however many requests arrive together, and after a failure no new
attempt for a while (`retry_interval`), so a down upstream is not hit by every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

from app.core.caching import CachePrices
from app.core.money import parse_amount
from app.storage.store import Store
from app.upstream.openrouter import OpenRouterClient, UpstreamError

log = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
STORE_SOURCE = "openrouter"  # the catalog's row in the `model_catalog` table
MAX_RETRY_INTERVAL = 60.0

# Flag names, as used by `?capability=` and in each model's `capabilities` object.
CAPABILITIES = (
    "tools",
    "reasoning",
    "structured_outputs",
    "image_input",
    "file_input",
    "audio_input",
    "video_input",
)
_PARAMETER_CAPABILITIES = {
    "tools": "tools",
    "reasoning": "reasoning",
    "structured_outputs": "structured_outputs",
}
_MODALITY_CAPABILITIES = {
    "image": "image_input",
    "file": "file_input",
    "audio": "audio_input",
    "video": "video_input",
}
SORTS = ("price", "context", "name")

Source = Literal["live", "cache", "database", "bootstrap"]


# --- one model ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pricing:
    input: Decimal | None  # USD per 1M prompt tokens; None: unknown
    output: Decimal | None  # USD per 1M completion tokens; None: unknown
    request: Decimal | None  # USD per request
    image: Decimal | None  # USD per input image
    # USD per 1M prompt tokens read from / written to the provider's prompt cache
    # (`input_cache_read`, `input_cache_write`); None: the model has no such price.
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None

    @property
    def known(self) -> bool:
        return self.input is not None and self.output is not None

    def cache_prices(self) -> CachePrices | None:
        """The prices a cache saving is computed with (per token), or None when the catalog
        gives no cache-read price (or no input price)."""
        if self.input is None or self.cache_read is None:
            return None
        return CachePrices(
            input=self.input / MILLION,
            read=self.cache_read / MILLION,
            write=None if self.cache_write is None else self.cache_write / MILLION,
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input_per_million": _number(self.input),
            "output_per_million": _number(self.output),
            "known": self.known,
        }
        if self.request:
            body["per_request"] = _number(self.request)
        if self.image:
            body["per_image"] = _number(self.image)
        if self.cache_read is not None:
            body["cache_read_per_million"] = _number(self.cache_read)
        if self.cache_write is not None:
            body["cache_write_per_million"] = _number(self.cache_write)
        return body


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    name: str
    context_length: int | None
    max_completion_tokens: int | None
    pricing: Pricing
    capabilities: frozenset[str]
    recommended: bool

    @property
    def output_limit(self) -> int | None:
        """The most tokens a reply may ask for: the provider's cap, else the context window."""
        return self.max_completion_tokens or self.context_length

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "context_length": self.context_length,
            "max_completion_tokens": self.max_completion_tokens,
            "pricing": self.pricing.to_json(),
            "capabilities": {flag: flag in self.capabilities for flag in CAPABILITIES},
            "recommended": self.recommended,
        }


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value > 0 else None


def _per_million(value: Any) -> Decimal | None:
    price = parse_amount(value)
    return None if price is None else price * MILLION


def parse_model(raw: Any, *, recommended: frozenset[str] = frozenset()) -> ModelInfo | None:
    """Our shape of one `GET /models` entry; None for an entry without an id."""
    if not isinstance(raw, dict):
        return None
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        return None
    model_id = model_id.strip()
    name = raw.get("name")
    top = _dict(raw.get("top_provider"))
    pricing = _dict(raw.get("pricing"))
    architecture = _dict(raw.get("architecture"))
    modalities = _strings(architecture.get("input_modalities"))
    if not modalities and isinstance(architecture.get("modality"), str):
        # Older entries only have "text+image->text".
        modalities = architecture["modality"].split("->", 1)[0].split("+")
    parameters = set(_strings(raw.get("supported_parameters")))
    capabilities = {flag for param, flag in _PARAMETER_CAPABILITIES.items() if param in parameters}
    capabilities |= {flag for kind, flag in _MODALITY_CAPABILITIES.items() if kind in modalities}
    return ModelInfo(
        id=model_id,
        name=name.strip() if isinstance(name, str) and name.strip() else model_id,
        context_length=_positive_int(raw.get("context_length"))
        or _positive_int(top.get("context_length")),
        max_completion_tokens=_positive_int(top.get("max_completion_tokens")),
        pricing=Pricing(
            input=_per_million(pricing.get("prompt")),
            output=_per_million(pricing.get("completion")),
            request=parse_amount(pricing.get("request")),
            image=parse_amount(pricing.get("image")),
            cache_read=_per_million(pricing.get("input_cache_read")),
            cache_write=_per_million(pricing.get("input_cache_write")),
        ),
        capabilities=frozenset(capabilities),
        recommended=model_id in recommended,
    )


# --- choosing and ordering ----------------------------------------------------------------------


def select_models(
    models: Iterable[ModelInfo],
    *,
    recommended: tuple[str, ...] = (),
    q: str | None = None,
    capabilities: Iterable[str] = (),
    max_price: Decimal | None = None,
    sort: str | None = None,
) -> list[ModelInfo]:
    """Filter, then order: recommended models first (in their configured order unless `sort`
    is given), then the rest by `sort` (default: name). Unknown values sort last."""
    terms = q.casefold().split() if q else []
    required = set(capabilities)
    chosen = [
        model
        for model in models
        if all(term in model.id.casefold() or term in model.name.casefold() for term in terms)
        and required <= model.capabilities
        and (
            max_price is None
            or (model.pricing.output is not None and model.pricing.output <= max_price)
        )
    ]
    rank = {model_id: index for index, model_id in enumerate(recommended)}

    def key(model: ModelInfo) -> tuple[Any, ...]:
        by_name = (model.name.casefold(), model.id)
        if sort == "price":
            price = model.pricing
            order: tuple[Any, ...] = (
                price.output is None,
                price.output or 0,
                price.input is None,
                price.input or 0,
                *by_name,
            )
        elif sort == "context":
            order = (model.context_length is None, -(model.context_length or 0), *by_name)
        else:
            order = by_name
        if not model.recommended:
            return (1, 0, *order)
        return (0, 0 if sort else rank.get(model.id, len(rank)), *order)

    return sorted(chosen, key=key)


# --- the cache ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    models: tuple[ModelInfo, ...]
    origin: Literal["live", "database", "bootstrap"]
    fetched_at: datetime | None

    @cached_property
    def _by_id(self) -> dict[str, ModelInfo]:
        # Built on first use, once per copy: every turn looks its models up here.
        return {model.id: model for model in reversed(self.models)}

    def find(self, model_id: str) -> ModelInfo | None:
        return self._by_id.get(model_id)


@dataclass(frozen=True)
class CatalogView:
    """What one request sees: a snapshot and how old it is."""

    snapshot: Snapshot
    source: Source
    stale: bool
    age_seconds: float | None
    refresh_error: str | None

    @property
    def available(self) -> bool:
        """False when only the built-in bootstrap list is there (nothing from OpenRouter)."""
        return self.source != "bootstrap"

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        return self.snapshot.models

    def find(self, model_id: str) -> ModelInfo | None:
        return self.snapshot.find(model_id)

    def meta(self) -> dict[str, Any]:
        fetched_at = self.snapshot.fetched_at
        return {
            "source": self.source,
            "fetched_at": fetched_at.isoformat() if fetched_at else None,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 3),
            "stale": self.stale,
            "refresh_error": self.refresh_error,
        }


# Used only when neither OpenRouter nor the database has ever given us a catalog. No prices:
# a price written here would go out of date silently, and an unknown one says what it is.
BOOTSTRAP_MODELS: tuple[dict[str, Any], ...] = (
    {
        "id": "anthropic/claude-3.5-sonnet",
        "name": "Anthropic: Claude 3.5 Sonnet",
        "context_length": 200000,
        "top_provider": {"max_completion_tokens": 8192},
        "architecture": {"input_modalities": ["text", "image", "file"]},
        "supported_parameters": ["tools", "tool_choice"],
    },
    {
        "id": "openai/gpt-4o",
        "name": "OpenAI: GPT-4o",
        "context_length": 128000,
        "top_provider": {"max_completion_tokens": 16384},
        "architecture": {"input_modalities": ["text", "image", "file"]},
        "supported_parameters": ["tools", "tool_choice", "structured_outputs"],
    },
    {
        "id": "openai/gpt-4o-mini",
        "name": "OpenAI: GPT-4o-mini",
        "context_length": 128000,
        "top_provider": {"max_completion_tokens": 16384},
        "architecture": {"input_modalities": ["text", "image", "file"]},
        "supported_parameters": ["tools", "tool_choice", "structured_outputs"],
    },
    {
        "id": "meta-llama/llama-3.1-70b-instruct",
        "name": "Meta: Llama 3.1 70B Instruct",
        "context_length": 131072,
        "architecture": {"input_modalities": ["text"]},
        "supported_parameters": ["tools", "tool_choice"],
    },
    {
        "id": "mistralai/mixtral-8x7b-instruct",
        "name": "Mistral: Mixtral 8x7B Instruct",
        "context_length": 32768,
        "architecture": {"input_modalities": ["text"]},
        "supported_parameters": ["tools", "tool_choice"],
    },
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ModelCatalog:
    """The cached catalog of one app; `get()` is what routes call."""

    def __init__(
        self,
        *,
        client: OpenRouterClient,
        store: Store,
        ttl: float,
        recommended: tuple[str, ...],
    ) -> None:
        self._client = client
        self._store = store
        self.ttl = ttl
        self.recommended = recommended
        self._recommended_set = frozenset(recommended)
        self.retry_interval = min(ttl, MAX_RETRY_INTERVAL)
        self._snapshot: Snapshot | None = None
        self._bootstrap = Snapshot(self._parse(BOOTSTRAP_MODELS), "bootstrap", None)
        self._task: asyncio.Task[Snapshot | None] | None = None
        self._database_read = False
        self._database_lock = asyncio.Lock()
        self._error: str | None = None
        self._retry_at = 0.0  # time.monotonic() before which no refresh is attempted
        # Every model's last known prices: budgets price turns with them, and a refresh that
        # drops a price (or a model) must not make a budget unenforceable.
        self._prices: dict[str, Pricing] = {}

    def _parse(self, raw: Iterable[Any]) -> tuple[ModelInfo, ...]:
        parsed = (parse_model(entry, recommended=self._recommended_set) for entry in raw)
        return tuple(model for model in parsed if model is not None)

    async def get(self) -> CatalogView:
        await self._read_database_copy()
        snapshot = self._snapshot
        if snapshot is None:
            fetched = None
            if time.monotonic() >= self._retry_at:
                # Shielded: a request that goes away must not cancel everyone's refresh.
                fetched = await asyncio.shield(self._start_refresh())
            if fetched is None:
                return CatalogView(self._bootstrap, "bootstrap", True, None, self._error)
            return self._view(fetched, "live")
        view = self._view(snapshot, "cache" if snapshot.origin == "live" else snapshot.origin)
        if view.stale and time.monotonic() >= self._retry_at:
            self._start_refresh()
        return view

    def _view(self, snapshot: Snapshot, source: Source) -> CatalogView:
        age = None
        if snapshot.fetched_at is not None:
            age = max(0.0, (_utcnow() - snapshot.fetched_at).total_seconds())
        stale = age is None or age > self.ttl
        return CatalogView(snapshot, source, stale, age, self._error)

    async def _read_database_copy(self) -> None:
        if self._database_read:
            return
        async with self._database_lock:
            if self._database_read:
                return
            try:
                stored = await self._store.config.load_model_catalog(source=STORE_SOURCE)
            except Exception:
                log.exception("could not read the model catalog's copy from the database")
                return  # tried again on the next request
            self._database_read = True
            if stored is not None and self._snapshot is None:
                raw, fetched_at = stored
                models = self._parse(raw if isinstance(raw, list) else [])
                if models:
                    self._snapshot = Snapshot(models, "database", fetched_at)
                    self._remember_prices(models)

    def _start_refresh(self) -> asyncio.Task[Snapshot | None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._refresh(), name="model-catalog-refresh"
            )
        return self._task

    async def _refresh(self) -> Snapshot | None:
        """Fetch, parse, keep and save a new copy; on failure keep the old one. Never raises."""
        try:
            raw = await self._client.list_models()
            models = self._parse(raw)
            if not models:
                raise UpstreamError("OpenRouter's model list has no usable entries")
        except UpstreamError as exc:
            return self._failed(exc.message)
        except Exception:
            log.exception("refreshing the model catalog failed")
            return self._failed("the model catalog could not be read")
        snapshot = Snapshot(models, "live", _utcnow())
        self._snapshot, self._error, self._retry_at = snapshot, None, 0.0
        self._remember_prices(models)
        log.info("model catalog refreshed: %d models", len(models))
        try:
            await self._store.config.save_model_catalog(
                source=STORE_SOURCE, models=raw, fetched_at=snapshot.fetched_at
            )
        except Exception:
            log.exception("could not save the model catalog to the database")
        return snapshot

    def _remember_prices(self, models: Iterable[ModelInfo]) -> None:
        self._prices.update((model.id, model.pricing) for model in models if model.pricing.known)

    def known_pricing(self, model_id: str) -> Pricing | None:
        """The model's prices from the newest copy that knew them (None: never known); call
        after `get()`, which loads the database's copy."""
        return self._prices.get(model_id)

    def _failed(self, message: str) -> None:
        log.warning("model catalog refresh failed: %s", message)
        self._error = message
        self._retry_at = time.monotonic() + self.retry_interval
        return None

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
